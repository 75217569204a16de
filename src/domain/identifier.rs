use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_security::{GeneralSecurityProfile, MixedScript};

use super::definitions::{IdentifierSettings, MergePolicy, NormaliserKind};

/// Longest identifier value accepted, before normalisation.
pub const MAX_IDENTIFIER_CHARS: usize = 256;

/// A normalised identifier: `{type, value}` where `value` is in the canonical
/// spelling of its type (E.164 for phones; NFKC, and lower case for emails,
/// whose domain is in its Unicode spelling). Only
/// [`IdentifierRules::normalise`] builds one from outside input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

impl Identifier {
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// The index key: type names never contain `:`, so the split is unambiguous.
    pub fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.kind.len() + 1 + self.value.len());
        key.extend_from_slice(self.kind.as_bytes());
        key.push(b':');
        key.extend_from_slice(self.value.as_bytes());
        key
    }

    /// Rebuilds an identifier from a stored index key.
    pub fn from_key(key: &[u8]) -> Option<Identifier> {
        let text = std::str::from_utf8(key).ok()?;
        let (kind, value) = text.split_once(':')?;
        Some(Identifier {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why a raw identifier could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("identifier type `{0}` is not configured")]
    UnknownType(String),
    #[error("identifier value is longer than {MAX_IDENTIFIER_CHARS} characters")]
    TooLong,
    #[error("{kind} value is not valid: {reason}")]
    Invalid { kind: String, reason: String },
}

/// An identifier that was recognised as a placeholder and left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredIdentifier {
    /// Position in the signal's `identifiers` array.
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    pub reason: &'static str,
}

pub enum NormaliseOutcome {
    Usable(Identifier),
    /// A placeholder such as `unknown` or a withheld caller id: never links anyone.
    Ignored(&'static str),
}

/// How one identifier type behaves, from configuration.
#[derive(Debug, Clone)]
pub struct TypeRule {
    pub normaliser: NormaliserKind,
    /// `None` means no limit.
    pub limit: Option<usize>,
    pub priority: u32,
    pub pii: bool,
    pub merge: MergePolicy,
    /// Names a browser, device or conversation rather than a person.
    pub session: bool,
    placeholders: HashSet<String>,
}

/// The configured identifier types and the normalisers behind them.
#[derive(Debug, Clone)]
pub struct IdentifierRules {
    types: HashMap<String, TypeRule>,
    unknown: Option<TypeRule>,
    placeholders: HashSet<String>,
    region: phonenumber::country::Id,
    phones: Arc<PhoneMemo>,
}

/// Phone spellings normalised lately, with their outcome. Parsing a number
/// and validating it against its region's patterns was the largest single
/// cost of a context card by phone (29% of its CPU under perf), and the same
/// caller's spelling arrives again and again: from the IVR, the desk, the
/// chatbot. Bounded: a full shard is emptied and starts again.
#[derive(Debug, Default)]
struct PhoneMemo {
    shards: [Mutex<HashMap<String, Result<String, &'static str>>>; PHONE_MEMO_SHARDS],
}

const PHONE_MEMO_SHARDS: usize = 16;
/// Entries per shard (16 × 4,096 spellings of at most 32 bytes: a few MiB).
const PHONE_MEMO_ENTRIES: usize = 4096;
/// Longer spellings are normalised every time.
const PHONE_MEMO_MAX_LEN: usize = 32;

impl PhoneMemo {
    fn get_or(
        &self,
        raw: &str,
        normalise: impl FnOnce() -> Result<String, &'static str>,
    ) -> Result<String, &'static str> {
        if raw.len() > PHONE_MEMO_MAX_LEN {
            return normalise();
        }
        let shard = raw.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        }) % PHONE_MEMO_SHARDS;
        let lock = || self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = lock().get(raw) {
            return known.clone();
        }
        let outcome = normalise();
        let mut map = lock();
        if map.len() >= PHONE_MEMO_ENTRIES {
            map.clear();
        }
        map.insert(raw.to_owned(), outcome.clone());
        outcome
    }
}

impl IdentifierRules {
    pub fn new(settings: &IdentifierSettings, default_region: &str) -> IdentifierRules {
        let fold = |list: &[String]| -> HashSet<String> {
            list.iter()
                .map(|p| compatible(p.trim()).to_lowercase())
                .collect()
        };
        let types = settings
            .types
            .iter()
            .map(|(name, t)| {
                let rule = TypeRule {
                    normaliser: t.normaliser,
                    limit: (t.limit > 0).then_some(t.limit),
                    priority: t.priority,
                    pii: t.pii,
                    merge: t.merge,
                    session: t.session,
                    placeholders: fold(&t.placeholders),
                };
                (name.clone(), rule)
            })
            .collect();
        let unknown = settings.allow_unknown_types.then(|| TypeRule {
            normaliser: NormaliserKind::Trim,
            limit: None,
            priority: u32::MAX,
            pii: true,
            merge: MergePolicy::Merge,
            session: false,
            placeholders: HashSet::new(),
        });
        IdentifierRules {
            types,
            unknown,
            placeholders: fold(&settings.placeholders),
            // Validated with the settings; NL is the documented default.
            region: default_region
                .parse()
                .unwrap_or(phonenumber::country::Id::NL),
            phones: Arc::default(),
        }
    }

    /// The rule of a configured type; with `allow_unknown_types`, also of any
    /// other name in the type-name shape (a `:` in a type would make index
    /// keys ambiguous).
    pub fn rule(&self, kind: &str) -> Option<&TypeRule> {
        self.types.get(kind).or_else(|| {
            self.unknown
                .as_ref()
                .filter(|_| crate::domain::is_valid_name(kind, 32))
        })
    }

    /// Whether `kind` is a type named in configuration (not merely accepted
    /// as an unknown type).
    pub fn is_configured(&self, kind: &str) -> bool {
        self.types.contains_key(kind)
    }

    pub fn is_pii(&self, kind: &str) -> bool {
        self.rule(kind).is_none_or(|r| r.pii)
    }

    /// Whether values of `kind` are shown only to callers who may read
    /// personal data: PII types, and session types, whose values work like
    /// passwords (whoever sends a browser's cookie on the web channel is
    /// believed to be that browser).
    pub fn is_secret(&self, kind: &str) -> bool {
        self.rule(kind).is_none_or(|r| r.pii || r.session)
    }

    pub fn priority(&self, kind: &str) -> u32 {
        self.rule(kind).map_or(u32::MAX, |r| r.priority)
    }

    /// What the published schema states about a raw identifier: a known
    /// type, a value of at most `MAX_IDENTIFIER_CHARS` characters. Whether
    /// the value is one the type's normaliser accepts only [`Self::normalise`] says.
    pub fn check_shape(&self, kind: &str, raw: &str) -> Result<&TypeRule, IdentifierError> {
        let rule = self
            .rule(kind)
            .ok_or_else(|| IdentifierError::UnknownType(kind.chars().take(64).collect()))?;
        if raw.chars().count() > MAX_IDENTIFIER_CHARS {
            return Err(IdentifierError::TooLong);
        }
        Ok(rule)
    }

    /// Turns a raw `{type, value}` into its canonical identifier, or says why not.
    ///
    /// Text is taken in its NFKC form first, so that a fullwidth or other
    /// compatibility spelling is the same identifier as the plain one. What
    /// would let two identifiers look alike and differ is refused: invisible
    /// characters, characters UTS 39 does not allow in identifiers, and a
    /// part of the value (between `.` `@` `+` `-` `_`) written in more than
    /// one script. ASCII, nearly every value, is already in NFKC and
    /// needs none of it.
    pub fn normalise(&self, kind: &str, raw: &str) -> Result<NormaliseOutcome, IdentifierError> {
        let rule = self.check_shape(kind, raw)?;
        let invalid = |reason: &str| IdentifierError::Invalid {
            kind: kind.to_owned(),
            reason: reason.to_owned(),
        };
        let text = compatible(raw.trim());
        let trimmed = text.trim();
        let unicode = !trimmed.is_ascii();
        if unicode && trimmed.chars().count() > MAX_IDENTIFIER_CHARS {
            return Err(IdentifierError::TooLong);
        }
        let folded = trimmed.to_lowercase();
        // Lower case of NFKC text is not always NFKC again.
        let folded = match compatible(&folded) {
            Cow::Borrowed(_) => folded,
            Cow::Owned(again) => again,
        };
        if self.placeholders.contains(&folded) || rule.placeholders.contains(&folded) {
            return Ok(NormaliseOutcome::Ignored("placeholder"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("contains control characters"));
        }
        if unicode {
            check_characters(trimmed).map_err(invalid)?;
        }
        let value = match rule.normaliser {
            NormaliserKind::Trim => trimmed.to_owned(),
            NormaliserKind::Lowercase => folded,
            NormaliserKind::Email => normalise_email(&folded).map_err(invalid)?,
            NormaliserKind::Phone => {
                let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
                if !digits.is_empty() && digits.chars().all(|c| c == '0') {
                    return Ok(NormaliseOutcome::Ignored("placeholder"));
                }
                self.normalise_phone(trimmed).map_err(invalid)?
            }
        };
        if !value.is_ascii() {
            // Again on the outcome: a punycode domain decodes to text of its own.
            check_characters(&value).map_err(invalid)?;
            check_scripts(&value).map_err(invalid)?;
        }
        Ok(NormaliseOutcome::Usable(Identifier {
            kind: kind.to_owned(),
            value,
        }))
    }

    fn normalise_phone(&self, raw: &str) -> Result<String, &'static str> {
        self.phones.get_or(raw, || self.parse_phone(raw))
    }

    fn parse_phone(&self, raw: &str) -> Result<String, &'static str> {
        if !raw.chars().any(|c| c.is_ascii_digit()) {
            return Err("is not a phone number");
        }
        let number =
            phonenumber::parse(Some(self.region), raw).map_err(|_| "is not a phone number")?;
        if !phonenumber::is_valid(&number) {
            return Err("is not a valid phone number for its region");
        }
        Ok(number.format().mode(phonenumber::Mode::E164).to_string())
    }
}

/// The NFKC form of `text`; ASCII is its own.
fn compatible(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || unicode_normalization::is_nfkc(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfkc().collect())
    }
}

/// Refuses characters that make a value look like another: invisible ones
/// (default-ignorable code points such as zero-width spaces and joiners, soft
/// hyphens, variation selectors and tags, and format characters such as bidi
/// controls), then any other that the UTS 39 General Security Profile does
/// not allow in identifiers. ASCII is left to the type's own rules.
fn check_characters(text: &str) -> Result<(), &'static str> {
    if text.is_ascii() {
        return Ok(());
    }
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    let categories = CodePointMapData::<GeneralCategory>::new();
    let mut outcome = Ok(());
    for c in text.chars().filter(|c| !c.is_ascii()) {
        if ignorable.contains(c) || categories.get(c) == GeneralCategory::Format {
            // The more telling reason, whatever else the value holds.
            return Err("contains invisible characters");
        }
        if !c.identifier_allowed() {
            outcome = Err("contains characters not allowed in identifiers");
        }
    }
    outcome
}

/// What separates the parts of a value whose scripts are judged apart: an
/// address may be Cyrillic before the `@` and Latin after it, but `аnna`
/// (a Cyrillic `а`, Latin `nna`) is a look-alike of `anna`.
const PART_SEPARATORS: [char; 5] = ['.', '@', '+', '-', '_'];

/// Refuses a part written in more than one script, as UTS 39 resolves them
/// (digits and punctuation go with any script; Han, Hiragana and Katakana
/// together are Japanese).
fn check_scripts(value: &str) -> Result<(), &'static str> {
    let mixed = value
        .split(PART_SEPARATORS)
        .any(|part| !part.is_ascii() && !part.is_single_script());
    if mixed {
        Err("mixes scripts in one part")
    } else {
        Ok(())
    }
}

/// Lower-cased, trimmed and in NFKC from the caller; checks the shape only
/// (one `@`, a local part, a dotted domain, no spaces), since only delivery
/// proves an address.
fn normalise_email(folded: &str) -> Result<String, &'static str> {
    if folded.len() > 254 {
        return Err("is longer than 254 characters");
    }
    let (local, domain) = folded.split_once('@').ok_or("has no @")?;
    if local.is_empty() || local.len() > 64 {
        return Err("has an empty or over-long local part");
    }
    if domain.contains('@') {
        return Err("has more than one @");
    }
    if folded.chars().any(char::is_whitespace) {
        return Err("contains white space");
    }
    match canonical_domain(domain)? {
        Cow::Borrowed(_) => Ok(folded.to_owned()),
        Cow::Owned(domain) => Ok(format!("{local}@{domain}")),
    }
}

/// An e-mail domain in the one spelling stored: its Unicode form (UTS 46
/// ToUnicode), so `xn--mnchen-3ya.de` and `münchen.de` are one domain. The
/// Unicode form rather than punycode because the rest of an address may be
/// Unicode anyway (the local part), because agents read it, and because
/// the script rules then judge what the labels say, not their encoding.
/// The shape (labels of 1 to 63 characters, no hyphen at either end) is
/// checked on the ASCII form, which is what DNS sees.
fn canonical_domain(domain: &str) -> Result<Cow<'_, str>, &'static str> {
    let punycode = |label: &str| label.starts_with("xn--");
    if domain.is_ascii() && !domain.split('.').any(punycode) {
        check_domain_shape(domain)?;
        return Ok(Cow::Borrowed(domain));
    }
    let uts46 = Uts46::new();
    let ascii = uts46
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map_err(|_| "has no valid domain")?;
    check_domain_shape(&ascii)?;
    let (unicode, outcome) =
        uts46.to_unicode(ascii.as_bytes(), AsciiDenyList::EMPTY, Hyphens::Allow);
    outcome.map_err(|_| "has no valid domain")?;
    Ok(Cow::Owned(unicode.into_owned()))
}

fn check_domain_shape(ascii: &str) -> Result<(), &'static str> {
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-') || l.len() > 63)
    {
        return Err("has no valid domain");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::definitions::shipped_identifiers;

    fn rules() -> IdentifierRules {
        IdentifierRules::new(&shipped_identifiers(), "NL")
    }

    fn usable(kind: &str, raw: &str) -> String {
        match rules().normalise(kind, raw) {
            Ok(NormaliseOutcome::Usable(id)) => id.value().to_owned(),
            Ok(NormaliseOutcome::Ignored(r)) => panic!("{raw} ignored: {r}"),
            Err(e) => panic!("{raw}: {e}"),
        }
    }

    #[test]
    fn remembered_phone_spellings_answer_as_a_fresh_parse_and_stay_bounded() {
        let rules = rules();
        for raw in [
            "06 1234 5678",
            "+31 6 12345678",
            "12",
            "0612",
            "+999 1234",
            "06-abc",
        ] {
            let fresh = rules.parse_phone(raw);
            for _ in 0..3 {
                assert_eq!(rules.normalise_phone(raw), fresh, "{raw}");
            }
        }
        for i in 0..(PHONE_MEMO_SHARDS * PHONE_MEMO_ENTRIES * 2) {
            let raw = format!("06{:08}", i);
            assert_eq!(rules.normalise_phone(&raw), rules.parse_phone(&raw));
        }
        for shard in &rules.phones.shards {
            assert!(shard.lock().unwrap().len() <= PHONE_MEMO_ENTRIES);
        }
        // Too long to remember: answered all the same.
        let long = format!("{}{}", "0".repeat(PHONE_MEMO_MAX_LEN), "612345678");
        assert_eq!(rules.normalise_phone(&long), rules.parse_phone(&long));
    }

    #[test]
    fn dutch_phone_spellings_are_one_identifier() {
        for raw in [
            "06 1234 5678",
            "0031612345678",
            "+31 6 12345678",
            "+31-6-1234-5678",
            "(06) 12345678",
        ] {
            assert_eq!(usable("phone", raw), "+31612345678", "{raw}");
        }
    }

    #[test]
    fn foreign_numbers_keep_their_country() {
        assert_eq!(usable("phone", "+44 20 7946 0958"), "+442079460958");
    }

    #[test]
    fn bad_phones_are_errors() {
        for raw in ["hello", "12", "+31 6 123"] {
            assert!(rules().normalise("phone", raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn withheld_callers_and_junk_are_ignored() {
        for (kind, raw) in [
            ("phone", "Withheld"),
            ("phone", "0000000000"),
            ("email", " NULL "),
            ("web_cookie", "undefined"),
            ("account_id", ""),
            ("device_id", "-1"),
        ] {
            assert!(
                matches!(
                    rules().normalise(kind, raw),
                    Ok(NormaliseOutcome::Ignored(_))
                ),
                "{kind}:{raw}"
            );
        }
    }

    #[test]
    fn emails_are_trimmed_lowered_and_checked() {
        assert_eq!(usable("email", "  Anna@Example.COM "), "anna@example.com");
        for raw in [
            "anna",
            "anna@",
            "@example.com",
            "an na@example.com",
            "anna@example",
            "a@b@c.com",
        ] {
            assert!(rules().normalise("email", raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn unknown_types_are_refused_by_default() {
        assert_eq!(
            rules().normalise("shoe_size", "42").err(),
            Some(IdentifierError::UnknownType("shoe_size".into()))
        );
    }

    #[test]
    fn unknown_types_when_allowed_still_need_a_type_name() {
        let mut identifiers = shipped_identifiers();
        identifiers.allow_unknown_types = true;
        let rules = IdentifierRules::new(&identifiers, "NL");
        assert!(matches!(
            rules.normalise("shoe_size", "42"),
            Ok(NormaliseOutcome::Usable(_))
        ));
        // A `:` would make the index key ambiguous; the rest is the published shape.
        for bad in ["shoe:size", "Shoe", "", "9lives", &"x".repeat(33)] {
            assert!(
                matches!(
                    rules.normalise(bad, "42"),
                    Err(IdentifierError::UnknownType(_))
                ),
                "{bad}"
            );
        }
    }

    /// The reason an identifier is refused for (asserting it never holds the value).
    fn refused(kind: &str, raw: &str) -> String {
        match rules().normalise(kind, raw) {
            Err(IdentifierError::Invalid { reason, .. }) => {
                assert!(!reason.contains(raw.trim()), "{reason}");
                reason
            }
            Err(e) => panic!("{raw:?}: refused otherwise: {e}"),
            Ok(NormaliseOutcome::Usable(id)) => panic!("{raw:?} accepted as {:?}", id.value()),
            Ok(NormaliseOutcome::Ignored(r)) => panic!("{raw:?} ignored: {r}"),
        }
    }

    #[test]
    fn fullwidth_and_compatibility_spellings_are_the_ascii_identifier() {
        assert_eq!(
            usable("email", "ａｎｎａ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
            "anna@example.com"
        );
        assert_eq!(usable("email", "Ａnna@Example.ＣＯＭ"), "anna@example.com");
        // A decomposed accent is the composed one.
        assert_eq!(
            usable("email", "jose\u{301}@example.com"),
            "josé@example.com"
        );
        assert_eq!(usable("account_id", "Ｃ-１２３"), "C-123");
        assert_eq!(usable("phone", "０６ １２３４ ５６７８"), "+31612345678");
        assert!(matches!(
            rules().normalise("email", "ＮＵＬＬ"),
            Ok(NormaliseOutcome::Ignored(_))
        ));
    }

    #[test]
    fn ascii_takes_the_fast_path() {
        assert!(matches!(compatible("anna@example.com"), Cow::Borrowed(_)));
        assert!(matches!(compatible("josé@example.com"), Cow::Borrowed(_)));
        assert!(matches!(compatible("ａnna"), Cow::Owned(_)));
    }

    #[test]
    fn look_alikes_in_another_script_are_refused() {
        // A Cyrillic `а` in a Latin name, or in a Latin domain.
        for raw in [
            "\u{430}nna@example.com",
            "anna@ex\u{430}mple.com",
            "\u{3b1}nna@example.com",
        ] {
            assert_eq!(refused("email", raw), "mixes scripts in one part", "{raw}");
        }
        assert_eq!(
            refused("account_id", "C-\u{441}ab12"),
            "mixes scripts in one part"
        );
        // Latin with Katakana is two scripts too.
        assert_eq!(
            refused("email", "yamada\u{30bf}\u{30ed}\u{30a6}@example.jp"),
            "mixes scripts in one part"
        );
    }

    #[test]
    fn invisible_characters_are_refused() {
        for c in [
            '\u{200b}',  // zero-width space
            '\u{200c}',  // zero-width non-joiner
            '\u{200d}',  // zero-width joiner
            '\u{ad}',    // soft hyphen
            '\u{2060}',  // word joiner
            '\u{feff}',  // byte-order mark
            '\u{fe0f}',  // variation selector 16
            '\u{e0041}', // tag latin capital letter a
            '\u{202e}',  // right-to-left override
            '\u{2066}',  // left-to-right isolate
            '\u{200f}',  // right-to-left mark
            '\u{61c}',   // arabic letter mark
        ] {
            let raw = format!("an{c}na@example.com");
            assert_eq!(
                refused("email", &raw),
                "contains invisible characters",
                "U+{:04X}",
                c as u32
            );
            let raw = format!("C-{c}123");
            assert_eq!(refused("account_id", &raw), "contains invisible characters");
        }
    }

    #[test]
    fn characters_not_allowed_in_identifiers_are_refused() {
        for raw in ["anna\u{263a}@example.com", "anna@example\u{2013}shop.com"] {
            assert_eq!(
                refused("email", raw),
                "contains characters not allowed in identifiers",
                "{raw}"
            );
        }
        assert_eq!(
            refused("loyalty_card", "LC\u{2013}42"),
            "contains characters not allowed in identifiers"
        );
    }

    #[test]
    fn punycode_and_unicode_domains_are_one_identifier() {
        let unicode = usable("email", "anna@münchen.de");
        assert_eq!(unicode, "anna@münchen.de");
        assert_eq!(usable("email", "anna@xn--mnchen-3ya.de"), unicode);
        assert_eq!(usable("email", "Anna@XN--MNCHEN-3YA.DE"), unicode);
        assert_eq!(usable("email", "ANNA@MÜNCHEN.DE"), unicode);
        let cyrillic = usable("email", "иван@пример.рф");
        let ascii = idna::domain_to_ascii("пример.рф").unwrap();
        assert!(ascii.starts_with("xn--"), "{ascii}");
        assert_eq!(usable("email", &format!("иван@{ascii}")), cyrillic);
    }

    #[test]
    fn punycode_cannot_smuggle_a_mixed_label() {
        // `exаmple` with a Cyrillic `а`, spelled as punycode.
        let smuggled = idna::domain_to_ascii("ex\u{430}mple.com").unwrap();
        assert!(smuggled.starts_with("xn--"), "{smuggled}");
        assert_eq!(
            refused("email", &format!("anna@{smuggled}")),
            "mixes scripts in one part"
        );
        // Punycode that decodes to nothing valid is no domain.
        assert_eq!(refused("email", "anna@xn--zz.com"), "has no valid domain");
    }

    #[test]
    fn addresses_written_in_one_script_are_accepted() {
        for (raw, canonical) in [
            ("Иван@Пример.РФ", "иван@пример.рф"),
            ("сергей.петров@почта.рф", "сергей.петров@почта.рф"),
            ("José.García@Café.es", "josé.garcía@café.es"),
            ("Zoë@example.com", "zoë@example.com"),
            ("straße@müller.de", "straße@müller.de"),
            ("JÜRGEN.Größe@Bäckerei.DE", "jürgen.größe@bäckerei.de"),
            ("Γιώργος@example.gr", "γιώργος@example.gr"),
            // Han and Katakana together are Japanese: one script set.
            ("山田タロウ@例え.jp", "山田タロウ@例え.jp"),
        ] {
            assert_eq!(usable("email", raw), canonical, "{raw}");
        }
        // Latin and Cyrillic parts apart from each other are each one script.
        assert_eq!(
            usable("email", "ivan.иван@example.com"),
            "ivan.иван@example.com"
        );
    }

    #[test]
    fn keys_round_trip() {
        let id = match rules().normalise("email", "a@b.nl").unwrap() {
            NormaliseOutcome::Usable(id) => id,
            NormaliseOutcome::Ignored(_) => unreachable!(),
        };
        assert_eq!(Identifier::from_key(&id.key()), Some(id));
    }
}
