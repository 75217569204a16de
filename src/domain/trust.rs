//! Trust in identity: how far an identifier in a signal is believed, by who
//! asserts it.
//!
//! A logged-in session, a checkout, the caller id the telephone network
//! delivered or the back office *verifies* an identifier; a value typed into a
//! web form or told to a chatbot is a *claim*. The table is configured per
//! channel (for tokens bound to one) and for tokens without a channel claim;
//! [`crate::domain::plan_resolution`] decides what each level may do.

use std::collections::BTreeMap;

use super::definitions::{TrustLevel, TrustSettings};

/// How far the service believes one identifier of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trust {
    /// Typed or told: never fuses customers, never reaches one who holds
    /// personal data.
    Claimed,
    /// Checked by the channel: merges as its type's policy says.
    Verified,
    /// Sent with `"verified": true` by a token holding `profiles:write`:
    /// merges whatever its type's policy says.
    Vouched,
}

/// One caller's row: a level per identifier type, and one for the rest.
#[derive(Debug, Clone, Default)]
struct Row {
    types: BTreeMap<String, TrustLevel>,
    rest: Option<TrustLevel>,
}

impl Row {
    fn new(settings: &BTreeMap<String, TrustLevel>) -> Row {
        Row {
            types: settings
                .iter()
                .filter(|(kind, _)| kind.as_str() != "*")
                .map(|(kind, level)| (kind.clone(), *level))
                .collect(),
            rest: settings.get("*").copied(),
        }
    }

    fn level(&self, kind: &str) -> TrustLevel {
        self.types
            .get(kind)
            .copied()
            .or(self.rest)
            .unwrap_or(TrustLevel::Claim)
    }
}

/// The configured trust table.
#[derive(Debug, Clone)]
pub struct TrustRules {
    unbound: Row,
    channels: BTreeMap<String, Row>,
}

impl TrustRules {
    pub fn new(settings: &TrustSettings) -> TrustRules {
        TrustRules {
            unbound: Row::new(&settings.unbound),
            channels: settings
                .channels
                .iter()
                .map(|(channel, row)| (channel.clone(), Row::new(row)))
                .collect(),
        }
    }

    /// The level of an identifier of type `kind` asserted by a token bound
    /// to `bound` (its `channel` claim), or by one without a channel claim.
    /// A channel without a row believes nothing on its own.
    pub fn level(&self, bound: Option<&str>, kind: &str) -> TrustLevel {
        match bound {
            None => self.unbound.level(kind),
            Some(channel) => self
                .channels
                .get(channel)
                .map_or(TrustLevel::Claim, |row| row.level(kind)),
        }
    }

    /// The trust of one identifier: the caller's level, raised to
    /// [`Trust::Vouched`] by the identifier's own `verified` flag.
    pub fn trust(&self, bound: Option<&str>, kind: &str, vouched: bool) -> Trust {
        if vouched {
            return Trust::Vouched;
        }
        match self.level(bound, kind) {
            TrustLevel::Verify => Trust::Verified,
            TrustLevel::Claim => Trust::Claimed,
        }
    }

    /// The whole table as text, one caller a line: what `check-config` prints.
    pub fn describe(&self, channels: &[String], types: &[&str]) -> String {
        const UNBOUND: &str = "(no channel claim)";
        let first = channels
            .iter()
            .map(String::len)
            .chain([UNBOUND.len()])
            .max()
            .unwrap_or(0);
        let column = |kind: &str| kind.len().max("verify".len());
        let line = |head: &str, cells: Vec<&str>| {
            let mut out = format!("{head:first$}");
            for (kind, cell) in types.iter().zip(cells) {
                out.push_str(&format!("  {cell:w$}", w = column(kind)));
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line("caller", types.to_vec());
        let callers = std::iter::once(None).chain(channels.iter().map(|c| Some(c.as_str())));
        for caller in callers {
            let cells = types
                .iter()
                .map(|kind| self.level(caller, kind).as_str())
                .collect();
            out.push_str(&line(caller.unwrap_or(UNBOUND), cells));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> TrustRules {
        let settings = TrustSettings {
            unbound: BTreeMap::from([("*".to_owned(), TrustLevel::Verify)]),
            channels: BTreeMap::from([
                (
                    "web".to_owned(),
                    BTreeMap::from([("web_cookie".to_owned(), TrustLevel::Verify)]),
                ),
                (
                    "agent".to_owned(),
                    BTreeMap::from([
                        ("*".to_owned(), TrustLevel::Verify),
                        ("email".to_owned(), TrustLevel::Claim),
                    ]),
                ),
            ]),
        };
        TrustRules::new(&settings)
    }

    #[test]
    fn a_type_named_nowhere_is_a_claim() {
        let r = rules();
        assert_eq!(r.level(Some("web"), "email"), TrustLevel::Claim);
        assert_eq!(r.level(Some("web"), "web_cookie"), TrustLevel::Verify);
        assert_eq!(r.level(Some("kiosk"), "web_cookie"), TrustLevel::Claim);
    }

    #[test]
    fn a_named_type_beats_the_star() {
        let r = rules();
        assert_eq!(r.level(Some("agent"), "phone"), TrustLevel::Verify);
        assert_eq!(r.level(Some("agent"), "email"), TrustLevel::Claim);
        assert_eq!(r.level(None, "email"), TrustLevel::Verify);
    }

    #[test]
    fn the_verified_flag_vouches_whatever_the_row() {
        let r = rules();
        assert_eq!(r.trust(Some("web"), "email", true), Trust::Vouched);
        assert_eq!(r.trust(Some("web"), "email", false), Trust::Claimed);
    }
}
