//! The scopes a token may carry, by the names tokens spell them with.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    ProfilesRead,
    PiiRead,
    SignalsWrite,
    ProfilesWrite,
    ProfilesErase,
    /// Implies every other scope.
    Admin,
    /// The change feed, for integrations.
    ChangesRead,
    /// Who is who: merge, unmerge, identifier removal, dismissing a
    /// suggestion, vouching for an identifier in a signal.
    IdentityWrite,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::ProfilesRead,
        Scope::PiiRead,
        Scope::SignalsWrite,
        Scope::ProfilesWrite,
        Scope::ProfilesErase,
        Scope::Admin,
        Scope::ChangesRead,
        Scope::IdentityWrite,
    ];

    /// Scopes a token bound to a channel carries only where
    /// `auth.channel_scopes` allows it.
    pub const SENSITIVE: [Scope; 5] = [
        Scope::PiiRead,
        Scope::IdentityWrite,
        Scope::ProfilesErase,
        Scope::ChangesRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ProfilesRead => "profiles:read",
            Scope::PiiRead => "pii:read",
            Scope::SignalsWrite => "signals:write",
            Scope::ProfilesWrite => "profiles:write",
            Scope::ProfilesErase => "profiles:erase",
            Scope::Admin => "admin",
            Scope::ChangesRead => "changes:read",
            Scope::IdentityWrite => "identity:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    pub(super) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}
