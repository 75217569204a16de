//! `anamnesis token`: a bearer token minted from the configured (or
//! generated) secret or a configured key. It refuses what the service would
//! refuse (a lifetime over the maximum, a scope the channel may not carry),
//! so an operator learns it here rather than from a 401.

use anyhow::Context;

use super::TokenArgs;
use crate::auth::{default_secret, Authenticator, Scope};
use crate::config::Settings;

pub fn run(settings: &Settings, args: TokenArgs) -> anyhow::Result<()> {
    let TokenArgs {
        scope,
        channel,
        customer,
        subject,
        ttl,
        kid,
    } = args;
    let scopes = scope
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(|s| Scope::parse(s).with_context(|| format!("unknown scope `{s}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ttl: std::time::Duration = ttl.into();
    if ttl.as_secs() > settings.auth.max_token_lifetime_secs {
        anyhow::bail!(
            "--ttl {} is longer than auth.max_token_lifetime_secs ({} s); the service would refuse this token",
            humantime::format_duration(ttl),
            settings.auth.max_token_lifetime_secs
        );
    }
    let (secret, _) = default_secret(&settings.auth, &settings.storage.path)?;
    let mut auth = Authenticator::new(&settings.auth, secret.as_deref())?;
    if let Some(kid) = &kid {
        auth = auth.sign_with(kid)?;
    }
    let token = match &customer {
        Some(named) => {
            let (kind, value) = named
                .split_once(':')
                .context("--customer takes TYPE:VALUE, e.g. account_id:C-1001")?;
            auth.mint_for_customer(&subject, kind, value, ttl)?
        }
        None => {
            if let Some(refused) = auth.refused_scope(&scopes, channel.as_deref()) {
                anyhow::bail!(
                    "tokens bound to channel `{}` may not carry `{}` (auth.channel_scopes); the service would refuse this token",
                    channel.as_deref().unwrap_or_default(),
                    refused.as_str()
                );
            }
            auth.mint(&subject, &scopes, channel.as_deref(), ttl)?
        }
    };
    println!("{token}");
    Ok(())
}
