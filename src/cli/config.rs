//! `anamnesis check-config`: a configuration checked before a deploy. It
//! loads and validates as the service would at start-up (key files
//! included), prints the configuration in effect as TOML with secrets
//! hidden, and the trust table and channel scopes as the service applies
//! them, as comments so the output stays a configuration file.

use anyhow::Context;

use crate::auth::Authenticator;
use crate::config::Settings;

pub fn check(settings: &Settings) -> anyhow::Result<()> {
    // Key files are read now, as at start-up. Without a configured secret
    // the service generates one on first start: stand in for it here
    // rather than write one.
    let stand_in = [7u8; 32];
    let secret = settings
        .auth
        .hs256_secret
        .is_none()
        .then_some(stand_in.as_slice());
    let auth = Authenticator::new(&settings.auth, secret).context("checking the auth keys")?;
    // The rules are compiled here, as at start-up: a journey rule, segment
    // or offer that cannot work fails the check.
    let rules = settings.validate()?.trust;
    print!("{}", settings.effective_toml()?);
    // The trust table as the service applies it, one caller a line.
    let types: Vec<&str> = settings
        .identifiers
        .types
        .keys()
        .map(String::as_str)
        .collect();
    let mut channels = settings.channels.priority.clone();
    channels.extend(
        settings
            .trust
            .channels
            .keys()
            .filter(|c| !settings.channels.priority.contains(c))
            .cloned(),
    );
    println!("\n# Trust table (verify: may merge and attach; claim: never does):");
    for line in rules.describe(&channels, &types).lines() {
        println!("#   {line}");
    }
    let unlisted: Vec<String> = settings
        .auth
        .channel_scopes
        .keys()
        .filter(|c| !channels.contains(c))
        .cloned()
        .collect();
    channels.extend(unlisted);
    println!(
        "\n# Sensitive scopes a channel's tokens may carry (any other is refused; tokens without a channel are not limited):"
    );
    for line in auth.describe_channel_scopes(&channels).lines() {
        println!("#   {line}");
    }
    eprintln!("configuration is valid");
    Ok(())
}
