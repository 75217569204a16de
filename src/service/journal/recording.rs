//! A store transaction that watches the calls a use case makes, so that the
//! journal can tell afterwards what the write did.

use super::Seen;
use crate::domain::{
    CustomerId, FollowUpKey, Identifier, IdentityEvent, Interaction, Profile, Suggestion,
};
use crate::store::{StoreError, StoreTx};

/// A store transaction that remembers what the write does (see [`Seen`]).
pub struct Recording<'t> {
    inner: &'t mut dyn StoreTx,
    seen: Seen,
    /// A failed read of the state before a change made by a call that cannot
    /// return an error: the write must not go ahead unrecorded.
    failure: Option<StoreError>,
}

impl<'t> Recording<'t> {
    pub fn new(inner: &'t mut dyn StoreTx) -> Recording<'t> {
        Recording {
            inner,
            seen: Seen::default(),
            failure: None,
        }
    }

    /// What the write did, or the recorder's own read failure.
    pub fn finish(self) -> Result<Seen, StoreError> {
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.seen),
        }
    }

    fn note_before(&mut self, id: CustomerId) -> Result<(), StoreError> {
        if !self.seen.before.contains_key(&id) && !self.seen.after.contains_key(&id) {
            let p = self.inner.profile(id)?;
            self.seen.before.insert(id, p);
        }
        Ok(())
    }

    fn note_alias(&mut self, id: CustomerId) {
        if !self.seen.aliases.contains_key(&id) {
            match self.inner.alias(id) {
                Ok(was) => {
                    self.seen.aliases.insert(id, (was, was));
                }
                Err(e) => {
                    self.failure.get_or_insert(e);
                }
            }
        }
    }
}

impl StoreTx for Recording<'_> {
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        Ok(self.profile_sized(id)?.map(|(p, _)| p))
    }

    fn profile_sized(&mut self, id: CustomerId) -> Result<Option<(Profile, usize)>, StoreError> {
        let found = self.inner.profile_sized(id)?;
        let seen = &mut self.seen;
        if !seen.before.contains_key(&id) && !seen.after.contains_key(&id) {
            seen.before
                .insert(id, found.as_ref().map(|(p, _)| p.clone()));
        }
        Ok(found)
    }

    fn profile_bytes(&mut self, id: CustomerId) -> Result<usize, StoreError> {
        self.inner.profile_bytes(id)
    }

    fn put_profile(&mut self, profile: &Profile) -> Result<(), StoreError> {
        self.note_before(profile.customer_id)?;
        self.inner.put_profile(profile)?;
        self.seen
            .after
            .insert(profile.customer_id, Some(profile.clone()));
        Ok(())
    }

    fn delete_profile(&mut self, id: CustomerId) {
        if let Err(e) = self.note_before(id) {
            self.failure.get_or_insert(e);
        }
        self.inner.delete_profile(id);
        self.seen.after.insert(id, None);
    }

    fn alias(&mut self, id: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        self.inner.alias(id)
    }

    fn put_alias(&mut self, absorbed: CustomerId, survivor: CustomerId) {
        self.note_alias(absorbed);
        self.inner.put_alias(absorbed, survivor);
        if let Some(entry) = self.seen.aliases.get_mut(&absorbed) {
            entry.1 = Some(survivor);
        }
    }

    fn delete_alias(&mut self, absorbed: CustomerId) {
        self.note_alias(absorbed);
        self.inner.delete_alias(absorbed);
        if let Some(entry) = self.seen.aliases.get_mut(&absorbed) {
            entry.1 = None;
        }
    }

    fn add_history(
        &mut self,
        customer: CustomerId,
        event: &IdentityEvent,
    ) -> Result<(), StoreError> {
        self.inner.add_history(customer, event)
    }

    fn delete_history(&mut self, customer: CustomerId) -> Result<(), StoreError> {
        self.inner.delete_history(customer)
    }

    fn suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
    ) -> Result<Option<Suggestion>, StoreError> {
        self.inner.suggestion(a, b)
    }

    fn put_suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
        s: &Suggestion,
    ) -> Result<(), StoreError> {
        self.inner.put_suggestion(a, b, s)
    }

    fn delete_suggestion(&mut self, a: CustomerId, b: CustomerId) {
        self.inner.delete_suggestion(a, b)
    }

    fn delete_suggestions_of(&mut self, a: CustomerId) -> Result<(), StoreError> {
        self.inner.delete_suggestions_of(a)
    }

    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        self.inner.owner(identifier)
    }

    fn set_owner(&mut self, identifier: &Identifier, owner: CustomerId) {
        self.inner.set_owner(identifier, owner);
        self.seen.identifiers.insert(identifier.clone());
    }

    fn remove_owner(&mut self, identifier: &Identifier) {
        self.inner.remove_owner(identifier);
        self.seen.identifiers.insert(identifier.clone());
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        self.inner.next_sequence()
    }

    fn add_interaction(
        &mut self,
        member: CustomerId,
        interaction: &Interaction,
    ) -> Result<(), StoreError> {
        self.inner.add_interaction(member, interaction)?;
        self.seen.interactions.push((member, interaction.clone()));
        Ok(())
    }

    fn delete_timeline(&mut self, member: CustomerId) -> Result<(), StoreError> {
        self.inner.delete_timeline(member)
    }

    fn signal_record(&mut self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.signal_record(signal_id)
    }

    fn put_signal_record(&mut self, signal_id: &str, customer: CustomerId, record: Vec<u8>) {
        self.inner.put_signal_record(signal_id, customer, record)
    }

    fn signal_ids_of(&mut self, customer: CustomerId) -> Result<Vec<String>, StoreError> {
        self.inner.signal_ids_of(customer)
    }

    fn forget_signal_index(&mut self, customer: CustomerId, signal_id: &str) {
        self.inner.forget_signal_index(customer, signal_id)
    }

    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        self.inner.allocate_change()
    }

    fn put_change(&mut self, seq: u64, customer: CustomerId, record: Vec<u8>) {
        self.inner.put_change(seq, customer, record)
    }

    fn delete_change(&mut self, seq: u64, customer: Option<CustomerId>) {
        self.inner.delete_change(seq, customer)
    }

    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(name)
    }

    fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.inner.put_meta(name, value)
    }

    fn put_follow_up(&mut self, entry: &FollowUpKey) {
        self.inner.put_follow_up(entry)
    }

    fn delete_follow_up(&mut self, entry: &FollowUpKey) {
        self.inner.delete_follow_up(entry)
    }

    fn key_record(&mut self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_record(key_id)
    }

    fn put_key_record(&mut self, key_id: &[u8], created_millis: u64, record: Vec<u8>) {
        self.inner.put_key_record(key_id, created_millis, record)
    }

    fn delete_key_record(&mut self, key_id: &[u8], created_millis: u64) {
        self.inner.delete_key_record(key_id, created_millis)
    }

    fn index_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.inner.index_key_record(customer, key_id)
    }

    fn unindex_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.inner.unindex_key_record(customer, key_id)
    }

    fn key_records_of(&mut self, customer: CustomerId) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.key_records_of(customer)
    }
}
