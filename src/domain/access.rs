//! What a caller may see, decided from its token at the edge and applied by
//! the views: the one fact the rules need about who is asking.

/// What the caller may see. Built from the token's scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Whether personal data (PII identifiers, PII traits, free text) is
    /// shown in clear.
    pub pii: bool,
}
