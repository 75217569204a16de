//! [`Store`] written once over any [`Engine`]: every read, by key or by
//! range of keys, and the engine's own calls passed through.

use super::keys::{
    change_key, change_seq, changes_of_key, just_after, key, keys_by_time_key, past_prefix,
    timeline_key, ALIAS, CHANGE, FOLLOW_UP, HISTORY, IDENTIFIER, KEYS_BY_TIME, KEY_RECORD, META,
    PROFILE, SIGNAL, SUGGESTION, TIMELINE,
};
use super::{corrupt, decode, decode_id, stats, Engine, Entry, RecordStats};
use crate::domain::{
    CustomerId, FollowUpKey, Identifier, IdentityEvent, Interaction, Profile, Suggestion,
    TimelinePosition,
};
use crate::store::{BackupReader, FollowUpKeyBytes, Store, StoreError, WriteFn};

impl<E: Engine> Store for E {
    fn shared(&self) -> bool {
        E::SHARED
    }

    fn profile(&self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn alias(&self, id: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        let k = key(ALIAS, &id.to_key());
        self.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
    }

    fn owner(&self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        let k = key(IDENTIFIER, &identifier.key());
        self.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
    }

    fn signal_record(&self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(SIGNAL, signal_id.as_bytes()))
    }

    fn suggestions(&self, a: CustomerId) -> Result<Vec<(CustomerId, Suggestion)>, StoreError> {
        let prefix = key(SUGGESTION, &a.to_key());
        let mut out = Vec::new();
        for entry in self.range(&prefix, &past_prefix(&prefix), false) {
            let (k, v) = entry?;
            let other = decode_id(&k, &k[prefix.len()..])?;
            out.push((other, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn history(
        &self,
        customer: CustomerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, IdentityEvent)>, StoreError> {
        let start = key(HISTORY, &customer.to_key());
        let mut end = start.clone();
        end.extend_from_slice(&before.unwrap_or(u64::MAX).to_be_bytes());
        let mut out = Vec::with_capacity(limit.min(64));
        for entry in self.range(&start, &end, true).take(limit) {
            let (k, v) = entry?;
            let seq = k
                .get(start.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&k, "history key without a position"))?;
            out.push((seq, decode(&k, &v)?));
        }
        Ok(out)
    }

    fn timeline(
        &self,
        member: CustomerId,
        before: Option<TimelinePosition>,
        limit: usize,
        keep: &dyn Fn(&Interaction) -> bool,
    ) -> Result<Vec<Interaction>, StoreError> {
        let start = key(TIMELINE, &member.to_key());
        let end = timeline_key(
            member,
            before.unwrap_or(TimelinePosition {
                millis: u64::MAX,
                seq: u64::MAX,
            }),
        );
        let mut out = Vec::with_capacity(limit.min(64));
        for entry in self.range(&start, &end, true) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let interaction: Interaction = decode(&k, &v)?;
            if keep(&interaction) {
                out.push(interaction);
            }
        }
        Ok(out)
    }

    fn interaction(
        &self,
        member: CustomerId,
        pos: TimelinePosition,
    ) -> Result<Option<Interaction>, StoreError> {
        let k = timeline_key(member, pos);
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn changes(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = change_key(after.saturating_add(1));
        let end = key(CHANGE + 1, &[]);
        let mut out = Vec::with_capacity(limit.min(256));
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, v) = entry?;
            out.push((change_seq(&k)?, v));
        }
        Ok(out)
    }

    fn changes_of(
        &self,
        customer: CustomerId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = changes_of_key(customer, after.saturating_add(1));
        let end = just_after(changes_of_key(customer, u64::MAX));
        let mut out = Vec::with_capacity(limit.min(256));
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in self.range(&start, &end, false) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let seq = change_seq(&k)?;
            if let Some(v) = self.get(&change_key(seq))? {
                out.push((seq, v));
            }
        }
        Ok(out)
    }

    fn profiles_after(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> Result<Vec<Profile>, StoreError> {
        let start = match after {
            Some(id) => just_after(key(PROFILE, &id.to_key())),
            None => key(PROFILE, &[]),
        };
        let end = key(PROFILE + 1, &[]);
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, v) = entry?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    fn follow_ups(
        &self,
        after: Option<&FollowUpKey>,
        resolved_before: u64,
        limit: usize,
    ) -> Result<Vec<FollowUpKey>, StoreError> {
        let start = match after {
            Some(a) => just_after(key(FOLLOW_UP, &a.to_bytes())),
            None => key(FOLLOW_UP, &[]),
        };
        let end = key(FOLLOW_UP, &resolved_before.to_be_bytes());
        let mut out = Vec::with_capacity(limit.min(256));
        if start >= end {
            return Ok(out);
        }
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, _) = entry?;
            let parsed = FollowUpKey::from_bytes(&k[1..])
                .ok_or_else(|| corrupt(&k, "not a follow-up key"))?;
            out.push(parsed);
        }
        Ok(out)
    }

    fn key_record(&self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(KEY_RECORD, key_id))
    }

    fn key_record_indexed(&self, created_millis: u64, key_id: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .get(&keys_by_time_key(created_millis, key_id))?
            .is_some())
    }

    fn key_records_before(
        &self,
        created_before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = key(KEYS_BY_TIME, &[]);
        let end = key(KEYS_BY_TIME, &created_before.to_be_bytes());
        let mut out = Vec::new();
        for entry in self.range(&start, &end, false).take(limit) {
            let (k, _) = entry?;
            let millis = k
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&k, "not an idempotency key index entry"))?;
            out.push((millis, k[9..].to_vec()));
        }
        Ok(out)
    }

    fn last_change(&self) -> Result<u64, StoreError> {
        match self.last_in(&key(CHANGE, &[]), &key(CHANGE + 1, &[]))? {
            Some(k) => change_seq(&k),
            None => Ok(0),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(META, name.as_bytes()))
    }

    fn write(&self, op: &mut WriteFn<'_>) -> Result<(), StoreError> {
        self.run_write(op)
    }

    fn apply(&self) -> Result<(), StoreError> {
        self.apply_staged()
    }

    fn flush(&self) -> Result<usize, StoreError> {
        self.make_durable()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }

    fn record_stats(&self) -> Result<Vec<RecordStats>, StoreError> {
        stats(self)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.disk_bytes()
    }

    fn generation(&self) -> u64 {
        Engine::generation(self)
    }

    fn begin_group(&self) -> bool {
        self.group()
    }

    fn positions(&self) -> Vec<u64> {
        self.group_positions()
    }

    fn begin_backup(&self) -> Result<Box<dyn BackupReader>, StoreError> {
        self.backup()
    }

    fn records_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let start = after.map(|k| just_after(k.to_vec())).unwrap_or_default();
        self.range(&start, &[u8::MAX; 2], false)
            .take(limit)
            .collect()
    }
}
