//! [`StoreTx`] written once over any [`Staging`]: every change a use case
//! makes, as keys put and removed within its write.

use super::keys::{
    change_key, changes_of_key, key, keys_by_time_key, keys_of_key, signals_of_key, suggestion_key,
    timeline_key, ALIAS, FOLLOW_UP, HISTORY, IDENTIFIER, KEYS_OF, KEY_RECORD, META, PROFILE,
    SIGNAL, SIGNALS_OF, SUGGESTION, TIMELINE,
};
use super::{decode, decode_id, encode, Staging};
use crate::domain::{
    CustomerId, FollowUpKey, Identifier, IdentityEvent, Interaction, Profile, Suggestion,
    TimelinePosition,
};
use crate::store::{FollowUpKeyBytes, StoreError, StoreTx};

fn get_id<S: Staging + ?Sized>(tx: &mut S, k: Vec<u8>) -> Result<Option<CustomerId>, StoreError> {
    tx.get(&k)?.map(|v| decode_id(&k, &v)).transpose()
}

impl<S: Staging> StoreTx for S {
    fn profile(&mut self, id: CustomerId) -> Result<Option<Profile>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn profile_sized(&mut self, id: CustomerId) -> Result<Option<(Profile, usize)>, StoreError> {
        let k = key(PROFILE, &id.to_key());
        self.get(&k)?
            .map(|v| decode(&k, &v).map(|p| (p, v.len())))
            .transpose()
    }

    fn profile_bytes(&mut self, id: CustomerId) -> Result<usize, StoreError> {
        Ok(self
            .get(&key(PROFILE, &id.to_key()))?
            .map_or(0, |v| v.len()))
    }

    fn put_profile(&mut self, profile: &Profile) -> Result<(), StoreError> {
        let v = encode(profile)?;
        self.put(key(PROFILE, &profile.customer_id.to_key()), v);
        Ok(())
    }

    fn delete_profile(&mut self, id: CustomerId) {
        self.remove(key(PROFILE, &id.to_key()));
    }

    fn alias(&mut self, id: CustomerId) -> Result<Option<CustomerId>, StoreError> {
        get_id(self, key(ALIAS, &id.to_key()))
    }

    fn put_alias(&mut self, absorbed: CustomerId, survivor: CustomerId) {
        self.put(key(ALIAS, &absorbed.to_key()), survivor.to_key().to_vec());
    }

    fn delete_alias(&mut self, absorbed: CustomerId) {
        self.remove(key(ALIAS, &absorbed.to_key()));
    }

    fn add_history(
        &mut self,
        customer: CustomerId,
        event: &IdentityEvent,
    ) -> Result<(), StoreError> {
        let seq = Staging::next_sequence(self)?;
        let mut k = key(HISTORY, &customer.to_key());
        k.extend_from_slice(&seq.to_be_bytes());
        let v = encode(event)?;
        self.put(k, v);
        Ok(())
    }

    fn delete_history(&mut self, customer: CustomerId) -> Result<(), StoreError> {
        for k in self.keys_with_prefix(&key(HISTORY, &customer.to_key()))? {
            self.remove(k);
        }
        Ok(())
    }

    fn suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
    ) -> Result<Option<Suggestion>, StoreError> {
        let k = suggestion_key(a, b);
        self.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn put_suggestion(
        &mut self,
        a: CustomerId,
        b: CustomerId,
        s: &Suggestion,
    ) -> Result<(), StoreError> {
        let v = encode(s)?;
        self.put(suggestion_key(a, b), v.clone());
        self.put(suggestion_key(b, a), v);
        Ok(())
    }

    fn delete_suggestion(&mut self, a: CustomerId, b: CustomerId) {
        self.remove(suggestion_key(a, b));
        self.remove(suggestion_key(b, a));
    }

    fn delete_suggestions_of(&mut self, a: CustomerId) -> Result<(), StoreError> {
        let prefix = key(SUGGESTION, &a.to_key());
        for k in self.keys_with_prefix(&prefix)? {
            if let Some(b) = CustomerId::from_key(&k[prefix.len()..]) {
                self.remove(suggestion_key(b, a));
            }
            self.remove(k);
        }
        Ok(())
    }

    fn owner(&mut self, identifier: &Identifier) -> Result<Option<CustomerId>, StoreError> {
        get_id(self, key(IDENTIFIER, &identifier.key()))
    }

    fn set_owner(&mut self, identifier: &Identifier, owner: CustomerId) {
        self.put(key(IDENTIFIER, &identifier.key()), owner.to_key().to_vec());
    }

    fn remove_owner(&mut self, identifier: &Identifier) {
        self.remove(key(IDENTIFIER, &identifier.key()));
    }

    fn next_sequence(&mut self) -> Result<u64, StoreError> {
        Staging::next_sequence(self)
    }

    fn add_interaction(
        &mut self,
        member: CustomerId,
        interaction: &Interaction,
    ) -> Result<(), StoreError> {
        let pos = TimelinePosition::from_id(&interaction.id).ok_or_else(|| {
            StoreError::Engine(format!("interaction id `{}` is malformed", interaction.id))
        })?;
        let v = encode(interaction)?;
        self.put(timeline_key(member, pos), v);
        Ok(())
    }

    fn delete_timeline(&mut self, member: CustomerId) -> Result<(), StoreError> {
        for k in self.keys_with_prefix(&key(TIMELINE, &member.to_key()))? {
            self.remove(k);
        }
        Ok(())
    }

    fn signal_record(&mut self, signal_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(SIGNAL, signal_id.as_bytes()))
    }

    fn put_signal_record(&mut self, signal_id: &str, customer: CustomerId, record: Vec<u8>) {
        self.put(key(SIGNAL, signal_id.as_bytes()), record);
        self.put(signals_of_key(customer, signal_id), Vec::new());
    }

    fn signal_ids_of(&mut self, customer: CustomerId) -> Result<Vec<String>, StoreError> {
        let prefix = key(SIGNALS_OF, &customer.to_key());
        Ok(self
            .keys_with_prefix(&prefix)?
            .into_iter()
            .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    fn forget_signal_index(&mut self, customer: CustomerId, signal_id: &str) {
        self.remove(signals_of_key(customer, signal_id));
    }

    fn allocate_change(&mut self) -> Result<Option<u64>, StoreError> {
        Staging::allocate_change(self)
    }

    fn put_change(&mut self, seq: u64, customer: CustomerId, record: Vec<u8>) {
        self.put(change_key(seq), record);
        self.put(changes_of_key(customer, seq), Vec::new());
    }

    fn delete_change(&mut self, seq: u64, customer: Option<CustomerId>) {
        self.remove(change_key(seq));
        if let Some(customer) = customer {
            self.remove(changes_of_key(customer, seq));
        }
    }

    fn meta(&mut self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(META, name.as_bytes()))
    }

    fn put_meta(&mut self, name: &str, value: Vec<u8>) {
        self.put(key(META, name.as_bytes()), value);
    }

    fn put_follow_up(&mut self, entry: &FollowUpKey) {
        self.put(key(FOLLOW_UP, &entry.to_bytes()), Vec::new());
    }

    fn key_record(&mut self, key_id: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(&key(KEY_RECORD, key_id))
    }

    fn put_key_record(&mut self, key_id: &[u8], created_millis: u64, record: Vec<u8>) {
        self.put(key(KEY_RECORD, key_id), record);
        self.put(keys_by_time_key(created_millis, key_id), Vec::new());
    }

    fn delete_key_record(&mut self, key_id: &[u8], created_millis: u64) {
        self.remove(key(KEY_RECORD, key_id));
        self.remove(keys_by_time_key(created_millis, key_id));
    }

    fn index_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.put(keys_of_key(customer, key_id), Vec::new());
    }

    fn key_records_of(&mut self, customer: CustomerId) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = key(KEYS_OF, &customer.to_key());
        let keys = self.keys_with_prefix(&prefix)?;
        for k in &keys {
            self.remove(k.clone());
        }
        Ok(keys
            .into_iter()
            .map(|k| k[prefix.len()..].to_vec())
            .collect())
    }

    fn unindex_key_record(&mut self, customer: CustomerId, key_id: &[u8]) {
        self.remove(keys_of_key(customer, key_id));
    }

    fn delete_follow_up(&mut self, entry: &FollowUpKey) {
        self.remove(key(FOLLOW_UP, &entry.to_bytes()));
    }
}
