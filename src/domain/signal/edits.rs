//! What a validated signal asks of the profile it resolves to: a sighting of
//! each identifier, the interaction its event adds to the timeline, and the
//! edits of traits, answers, the channel, segment counters, the episode and
//! the journey. Pure: the service finds the profile, numbers the
//! interaction, holds the edits to the profile's caps and applies them.

use super::Signal;
use crate::domain::position::TimelinePosition;
use crate::domain::profile::{
    Answer, Feedback, Hit, Interaction, Journey, ProfileEdit, TraitValue,
};
use crate::domain::segment::Personalization;

/// The profile edits one signal makes.
#[derive(Debug, Clone)]
pub struct SignalEdits {
    /// `sightings[i]` records that `signal.identifiers[i]` was seen. It goes
    /// to the member that holds the identifier (a new one joins the member
    /// the signal speaks for) and is never capped: a full profile still
    /// records who the customer is.
    pub sightings: Vec<ProfileEdit>,
    /// The rest, in the order the caps judge them: traits, answers, the
    /// channel, then what the event brings (the counters it feeds, its
    /// feedback scores as traits, the episode, the journey stage).
    pub changes: Vec<ProfileEdit>,
}

/// The interaction a signal's event adds to the timeline, numbered `seq`
/// (the store's next sequence) within the millisecond the signal is ordered
/// at; `None` for a signal without an event.
pub fn interaction_of(signal: &Signal, seq: u64) -> Option<Interaction> {
    let event = signal.event.as_ref()?;
    let at = signal.ordered_at();
    let position = TimelinePosition {
        millis: u64::try_from(at.timestamp_millis()).unwrap_or(0),
        seq,
    };
    Some(Interaction {
        id: position.to_id(),
        channel: signal.channel.clone(),
        kind: event.kind.clone(),
        occurred_at: at,
        summary: event.summary.clone(),
        episode_id: event.episode.as_ref().map(|e| e.id.clone()),
        journey_stage: event.journey_stage.clone(),
        properties: event.properties.clone(),
        signal_id: signal.signal_id.clone(),
        received_at: (signal.received_at != at).then_some(signal.received_at),
    })
}

/// The edits `signal` makes. Every observation is stamped with the time the
/// signal is ordered by ([`Signal::ordered_at`]), so whichever signal
/// observed last wins, in whatever order they arrive. `claimed[i]` says
/// that `signal.identifiers[i]` is believed on a claim only; `interaction`
/// is what [`interaction_of`] made of the signal, named by the hits of the
/// counters it feeds.
pub fn edits_of(
    signal: &Signal,
    claimed: &[bool],
    interaction: Option<&Interaction>,
    personalization: &Personalization,
) -> SignalEdits {
    let at = signal.ordered_at();
    let sightings = (signal.identifiers.iter().enumerate())
        .map(|(i, identifier)| ProfileEdit::SeeIdentifier {
            identifier: identifier.clone(),
            channel: signal.channel.clone(),
            at,
            claimed: claimed[i],
        })
        .collect();
    let observed = |value| TraitValue {
        value,
        channel: signal.channel.clone(),
        observed_at: at,
        signal_id: signal.signal_id.clone(),
    };
    let mut changes: Vec<ProfileEdit> = Vec::new();
    for (name, value) in &signal.traits {
        changes.push(ProfileEdit::Trait {
            name: name.clone(),
            value: observed(value.clone()),
        });
    }
    for a in &signal.answers {
        changes.push(ProfileEdit::Answer {
            key: a.key.clone(),
            answer: Answer {
                value: a.value.clone(),
                question: a.question.clone(),
                channel: signal.channel.clone(),
                captured_at: at,
                expires_at: a.expires_at,
                signal_id: signal.signal_id.clone(),
            },
        });
    }
    changes.push(ProfileEdit::Channel {
        channel: signal.channel.clone(),
        at,
        interactions: u64::from(signal.event.is_some()),
    });
    let Some(event) = &signal.event else {
        return SignalEdits { sightings, changes };
    };
    if let Some(interaction) = interaction {
        let counters =
            personalization.counters_for(&event.kind, &signal.channel, &event.properties);
        for counter in counters {
            changes.push(ProfileEdit::Count {
                counter: counter.key.clone(),
                hit: Hit {
                    at,
                    id: interaction.id.clone(),
                },
                keep: counter.keep,
            });
        }
    }
    if let Some(ep) = &event.episode {
        let feedback = event.feedback.as_ref().map(|f| Feedback {
            at,
            channel: signal.channel.clone(),
            nps: f.nps,
            ces: f.ces,
            comment: f.comment.clone(),
        });
        // The scores are traits too: the latest score says how the
        // customer feels now, whatever the episode.
        for (name, score) in [
            ("nps", event.feedback.as_ref().and_then(|f| f.nps)),
            ("ces", event.feedback.as_ref().and_then(|f| f.ces)),
        ] {
            if let Some(score) = score {
                changes.push(ProfileEdit::Trait {
                    name: name.to_owned(),
                    value: observed(Some(score.into())),
                });
            }
        }
        changes.push(ProfileEdit::Episode {
            id: ep.id.clone(),
            title: ep.title.clone(),
            status: ep.status,
            public_status: ep.public_status.clone(),
            feedback,
            channel: signal.channel.clone(),
            at,
        });
    }
    if let Some(stage) = &event.journey_stage {
        changes.push(ProfileEdit::Journey(Journey {
            stage: stage.clone(),
            updated_at: at,
            channel: signal.channel.clone(),
        }));
    }
    SignalEdits { sightings, changes }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, TimeDelta, TimeZone, Utc};
    use serde_json::{json, Value};

    use super::*;
    use crate::domain::definitions::SegmentSettings;
    use crate::domain::profile::{EpisodeStatus, Profile};
    use crate::domain::signal::{EpisodeInput, ValidAnswer, ValidEvent, ValidFeedback};
    use crate::domain::{ChannelRules, CustomerId, Identifier};

    fn t(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, hour, 0, 0).unwrap()
    }

    fn ident(kind: &str, value: &str) -> Identifier {
        Identifier::from_key(format!("{kind}:{value}").as_bytes()).unwrap()
    }

    /// A signal from `web` that occurred and was received at `at`, with one
    /// e-mail address and nothing else.
    fn signal(id: &str, at: DateTime<Utc>) -> Signal {
        Signal {
            signal_id: Some(id.to_owned()),
            channel: "web".to_owned(),
            occurred_at: at,
            occurred_at_given: true,
            received_at: at,
            identifiers: vec![ident("email", "anna@example.com")],
            verified: vec![true],
            ignored: Vec::new(),
            traits: BTreeMap::new(),
            answers: Vec::new(),
            event: None,
        }
    }

    fn event(kind: &str) -> ValidEvent {
        ValidEvent {
            kind: kind.to_owned(),
            summary: Some("looked at a car".to_owned()),
            episode: None,
            journey_stage: None,
            journey_stage_given: false,
            properties: serde_json::Map::new(),
            feedback: None,
        }
    }

    fn edits(s: &Signal) -> SignalEdits {
        let claimed = vec![false; s.identifiers.len()];
        let interaction = interaction_of(s, 7);
        edits_of(
            s,
            &claimed,
            interaction.as_ref(),
            &Personalization::default(),
        )
    }

    fn trait_value(edits: &SignalEdits, wanted: &str) -> Option<TraitValue> {
        edits.changes.iter().find_map(|c| match c {
            ProfileEdit::Trait { name, value } if name == wanted => Some(value.clone()),
            _ => None,
        })
    }

    fn kinds(edits: &SignalEdits) -> Vec<&'static str> {
        edits
            .changes
            .iter()
            .map(|c| match c {
                ProfileEdit::SeeIdentifier { .. } => "see_identifier",
                ProfileEdit::RemoveIdentifier(_) => "remove_identifier",
                ProfileEdit::AdoptIdentifier(_) => "adopt_identifier",
                ProfileEdit::Trait { .. } => "trait",
                ProfileEdit::Answer { .. } => "answer",
                ProfileEdit::Channel { .. } => "channel",
                ProfileEdit::Journey(_) => "journey",
                ProfileEdit::Episode { .. } => "episode",
                ProfileEdit::Consent { .. } => "consent",
                ProfileEdit::Count { .. } => "count",
            })
            .collect()
    }

    #[test]
    fn each_identifier_is_sighted_on_the_signals_channel_with_its_claim() {
        let mut s = signal("s-1", t(9));
        s.identifiers.push(ident("phone", "+31612345678"));
        s.verified.push(false);
        let out = edits_of(&s, &[false, true], None, &Personalization::default());
        let seen: Vec<_> = (out.sightings.iter())
            .map(|e| match e {
                ProfileEdit::SeeIdentifier {
                    identifier,
                    channel,
                    at,
                    claimed,
                } => (identifier.to_string(), channel.as_str(), *at, *claimed),
                other => panic!("not a sighting: {other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("email:anna@example.com".to_owned(), "web", t(9), false),
                ("phone:+31612345678".to_owned(), "web", t(9), true),
            ]
        );
        // Sightings are not among the capped changes.
        assert_eq!(kinds(&out), ["channel"]);
    }

    #[test]
    fn traits_are_observed_by_the_signal_and_null_deletes() {
        let mut s = signal("s-1", t(9));
        s.traits.insert("first_name".into(), Some(json!("Anna")));
        s.traits.insert("nickname".into(), None);
        let out = edits(&s);
        assert_eq!(
            trait_value(&out, "first_name"),
            Some(TraitValue {
                value: Some(json!("Anna")),
                channel: "web".into(),
                observed_at: t(9),
                signal_id: Some("s-1".into()),
            })
        );
        assert_eq!(trait_value(&out, "nickname").map(|v| v.value), Some(None));
        assert_eq!(kinds(&out), ["trait", "trait", "channel"]);
    }

    #[test]
    fn answers_keep_their_question_and_expiry() {
        let mut s = signal("s-1", t(9));
        s.answers.push(ValidAnswer {
            key: "budget".into(),
            value: json!(30000),
            question: Some("What may it cost?".into()),
            expires_at: Some(t(21)),
        });
        let out = edits(&s);
        let answers: Vec<_> = (out.changes.iter())
            .filter_map(|c| match c {
                ProfileEdit::Answer { key, answer } => Some((key.as_str(), answer.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            answers,
            [(
                "budget",
                Answer {
                    value: json!(30000),
                    question: Some("What may it cost?".into()),
                    channel: "web".into(),
                    captured_at: t(9),
                    expires_at: Some(t(21)),
                    signal_id: Some("s-1".into()),
                }
            )]
        );
    }

    #[test]
    fn an_event_is_one_interaction_on_the_timeline_and_on_the_channel() {
        let quiet = signal("s-1", t(9));
        assert_eq!(interaction_of(&quiet, 7), None);
        assert!(matches!(
            edits(&quiet).changes[..],
            [ProfileEdit::Channel {
                interactions: 0,
                ..
            }]
        ));

        let mut s = signal("s-2", t(9));
        s.event = Some(ValidEvent {
            journey_stage: Some("consideration".into()),
            properties: json!({"model": "ev"}).as_object().cloned().unwrap(),
            ..event("page_view")
        });
        let interaction = interaction_of(&s, 7).expect("an interaction");
        assert_eq!(
            interaction,
            Interaction {
                id: format!("{:013}-7", t(9).timestamp_millis()),
                channel: "web".into(),
                kind: "page_view".into(),
                occurred_at: t(9),
                summary: Some("looked at a car".into()),
                episode_id: None,
                journey_stage: Some("consideration".into()),
                properties: json!({"model": "ev"}).as_object().cloned().unwrap(),
                signal_id: Some("s-2".into()),
                received_at: None,
            }
        );
        let out = edits(&s);
        assert_eq!(kinds(&out), ["channel", "journey"]);
        assert!(matches!(
            &out.changes[0],
            ProfileEdit::Channel { interactions: 1, at, .. } if *at == t(9)
        ));
        assert!(matches!(
            &out.changes[1],
            ProfileEdit::Journey(j) if j.stage == "consideration" && j.updated_at == t(9)
        ));
    }

    #[test]
    fn an_interaction_a_segment_counts_is_a_hit_naming_it() {
        let when: Value = json!([{ "interactions": {
            "type": "page_view", "properties": {"model": "ev"},
            "at_least": 2, "within": "10days" } }]);
        let segment: SegmentSettings = serde_json::from_value(json!({ "when": when })).unwrap();
        let segments = BTreeMap::from([("ev_lookers".to_owned(), segment)]);
        let personalization =
            Personalization::compile(&segments, &BTreeMap::new(), &["consideration".to_owned()])
                .unwrap();
        let mut s = signal("s-1", t(9));
        s.event = Some(ValidEvent {
            properties: json!({"model": "ev"}).as_object().cloned().unwrap(),
            ..event("page_view")
        });
        let interaction = interaction_of(&s, 3).unwrap();
        let out = edits_of(&s, &[false], Some(&interaction), &personalization);
        let hits: Vec<_> = (out.changes.iter())
            .filter_map(|c| match c {
                ProfileEdit::Count { hit, keep, .. } => Some((hit.clone(), *keep)),
                _ => None,
            })
            .collect();
        assert_eq!(
            hits,
            [(
                Hit {
                    at: t(9),
                    id: interaction.id.clone(),
                },
                2
            )]
        );
        // Another kind of event feeds no counter.
        s.event = Some(event("purchase"));
        let interaction = interaction_of(&s, 4).unwrap();
        let out = edits_of(&s, &[false], Some(&interaction), &personalization);
        assert_eq!(kinds(&out), ["channel"]);
    }

    #[test]
    fn an_episodes_feedback_is_kept_on_it_and_as_the_latest_scores() {
        let mut s = signal("s-1", t(9));
        s.event = Some(ValidEvent {
            episode: Some(EpisodeInput {
                id: "order-1".into(),
                title: Some("Order 1".into()),
                status: Some(EpisodeStatus::Resolved),
                public_status: Some("Delivered".into()),
                feedback: None,
            }),
            feedback: Some(ValidFeedback {
                nps: Some(9),
                ces: None,
                comment: Some("quick".into()),
            }),
            ..event("support_closed")
        });
        let out = edits(&s);
        assert_eq!(kinds(&out), ["channel", "trait", "episode"]);
        assert_eq!(
            trait_value(&out, "nps").and_then(|v| v.value),
            Some(json!(9))
        );
        assert_eq!(trait_value(&out, "ces"), None);
        match &out.changes[2] {
            ProfileEdit::Episode {
                id,
                title,
                status,
                public_status,
                feedback,
                channel,
                at,
            } => {
                assert_eq!(
                    (id.as_str(), title.as_deref(), *status),
                    ("order-1", Some("Order 1"), Some(EpisodeStatus::Resolved))
                );
                assert_eq!(public_status.as_deref(), Some("Delivered"));
                assert_eq!((channel.as_str(), *at), ("web", t(9)));
                assert_eq!(
                    feedback.as_ref(),
                    Some(&Feedback {
                        at: t(9),
                        channel: "web".into(),
                        nps: Some(9),
                        ces: None,
                        comment: Some("quick".into()),
                    })
                );
            }
            other => panic!("not an episode: {other:?}"),
        }
        assert_eq!(
            interaction_of(&s, 1).unwrap().episode_id.as_deref(),
            Some("order-1")
        );
    }

    /// A channel whose clock runs ahead gains nothing by it: its
    /// observations are ordered by when the signal was received.
    #[test]
    fn a_time_in_the_future_is_ordered_as_the_receipt_time() {
        let mut s = signal("s-1", t(9));
        s.occurred_at = t(9) + TimeDelta::minutes(4);
        s.traits.insert("tier".into(), Some(json!("gold")));
        s.event = Some(event("page_view"));
        let out = edits(&s);
        assert_eq!(trait_value(&out, "tier").unwrap().observed_at, t(9));
        let interaction = interaction_of(&s, 1).unwrap();
        assert_eq!(
            (interaction.occurred_at, interaction.received_at),
            (t(9), None)
        );

        // An earlier time is kept, with the receipt time beside it.
        let mut late = signal("s-2", t(10));
        late.occurred_at = t(8);
        late.event = Some(event("page_view"));
        let interaction = interaction_of(&late, 1).unwrap();
        assert_eq!(
            (interaction.occurred_at, interaction.received_at),
            (t(8), Some(t(10)))
        );
        assert!(interaction
            .id
            .starts_with(&format!("{:013}-", t(8).timestamp_millis())));
    }

    /// The edits carry the time of observation, not of arrival: applied in
    /// either order, the later observation's trait and answer stand.
    #[test]
    fn the_latest_observation_wins_whatever_order_signals_arrive_in() {
        let observed = |id: &str, at: DateTime<Utc>, city: &str| {
            let mut s = signal(id, t(12));
            s.occurred_at = at;
            s.traits.insert("city".into(), Some(json!(city)));
            s.answers.push(ValidAnswer {
                key: "moving".into(),
                value: json!(city),
                question: None,
                expires_at: None,
            });
            edits(&s)
        };
        // Both arrive at noon, and the older observation has the higher
        // signal id: only the time of observation can make the newer win.
        let older = observed("s-2", t(8), "Utrecht");
        let newer = observed("s-1", t(10), "Leiden");
        let channels = ChannelRules::new(vec!["web".into()], false);
        for order in [[&older, &newer], [&newer, &older]] {
            let mut p = Profile::new(CustomerId::generate(), t(7));
            let member = p.customer_id;
            for e in order {
                for change in e.sightings.iter().chain(&e.changes) {
                    p.apply(member, change, &channels);
                }
            }
            assert_eq!(p.traits["city"].value, Some(json!("Leiden")));
            assert_eq!(p.answers["moving"].value, json!("Leiden"));
            let seen = &p.identifiers[0];
            assert_eq!((seen.first_seen, seen.last_seen), (t(8), t(10)));
        }
    }
}
