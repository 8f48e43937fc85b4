//! `popadm domain add|del|list`.

use anyhow::{bail, Context as _};
use store::AccountName;

use crate::output::print;
use crate::users::confirm;
use crate::{open_existing, open_or_create, DomainCommand, Location};

pub fn run(location: &Location, cmd: DomainCommand) -> anyhow::Result<()> {
    match cmd {
        DomainCommand::Add { domain } => {
            let domain = domain_name(&domain)?;
            open_or_create(location)?
                .add_domain(&domain)
                .with_context(|| format!("adding domain {domain}"))?;
            print(&format!("added {domain}\n"))
        }
        DomainCommand::List => {
            let store = open_existing(location)?;
            let mut out = String::from("DOMAIN\tACCOUNTS\n");
            for (name, accounts) in store.list_domains().context("listing domains")? {
                out.push_str(&format!("{name}\t{accounts}\n"));
            }
            print(&out)
        }
        DomainCommand::Set { domain, quota } => {
            let domain = domain_name(&domain)?;
            let store = open_existing(location)?;
            print(&crate::quota::set(
                &*store,
                store::QuotaScope::Domain(&domain),
                &domain,
                quota.quota_messages,
                quota.quota_octets,
            )?)
        }
        DomainCommand::Del { domain, yes } => {
            let domain = domain_name(&domain)?;
            let store = open_existing(location)?;
            let members = store
                .domain_accounts(&domain)
                .with_context(|| format!("looking domain {domain} up"))?;
            if !members.is_empty() && !yes {
                let list = members
                    .iter()
                    .map(AccountName::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let question = format!(
                    "delete {domain} with its {} accounts and all their mail ({list})? [y/N] ",
                    members.len()
                );
                if !confirm(&question)
                    .with_context(|| format!("{domain} has {} accounts: {list}", members.len()))?
                {
                    bail!("nothing deleted");
                }
            }
            let gone = store
                .delete_domain(&domain)
                .with_context(|| format!("deleting domain {domain}"))?;
            print(&format!("deleted {domain} and {} accounts\n", gone.len()))
        }
    }
}

/// A domain as account names carry it: validated and lowercased.
fn domain_name(domain: &str) -> anyhow::Result<String> {
    let probe = AccountName::parse(&format!("postmaster@{domain}"))
        .with_context(|| format!("invalid domain {domain:?}"))?;
    probe
        .check_new()
        .with_context(|| format!("invalid domain {domain:?}"))?;
    match probe.domain() {
        Some(d) => Ok(d.to_string()),
        None => bail!("invalid domain {domain:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::domain_name;

    #[test]
    fn domain_names_are_checked_and_lowercased() {
        assert_eq!(
            domain_name("Example.ORG").ok().as_deref(),
            Some("example.org")
        );
        assert!(domain_name("a b").is_err());
        assert!(domain_name("").is_err());
        assert!(domain_name("x@y").is_err());
        assert!(domain_name("x/y").is_err());
        assert!(domain_name("-x.org").is_err());
    }
}
