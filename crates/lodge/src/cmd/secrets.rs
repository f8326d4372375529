//! `lodge secret …`: users' secrets from the operator's terminal, and master-key rotation.
//! Values come from a prompt or stdin, never from argv (where `ps` would show them), and are
//! printed only by `secret get`, which is asked for them.

use super::{Context, Create};
use crate::cli::{Global, SecretCmd};
use anyhow::{Context as _, Result, bail};
use lodge_core::UserName;
use lodge_hub::Auditor;
use lodge_hub::audit::AdminAction;
use lodge_vault::{Fields, MasterKeySource, Vault};
use std::io::{IsTerminal, Read, Write};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Opens the vault of DATA_DIR with the master key from `LODGE_MASTER_KEY` or `master.key`.
pub async fn open_vault(ctx: &Context) -> Result<Arc<Vault>> {
    let env_key = std::env::var("LODGE_MASTER_KEY").ok().map(Zeroizing::new);
    let vault = Vault::open(
        ctx.store.clone(),
        &ctx.data_dir,
        env_key.as_deref().map(|k| k.as_str()),
    )
    .await?;
    Ok(Arc::new(vault))
}

pub async fn run(g: &Global, c: SecretCmd) -> Result<()> {
    let ctx = Context::open(g, Create::No).await?;
    let audit = Auditor::start(ctx.store.clone());
    let result = match open_vault(&ctx).await {
        Ok(vault) => command(&ctx, &vault, &audit, c).await,
        Err(e) => Err(e),
    };
    ctx.close(Some(audit)).await;
    result
}

async fn user_id(ctx: &Context, name: &str) -> Result<(UserName, i64)> {
    let n = UserName::parse(name)?;
    match ctx.store.user(&n).await? {
        Some(u) => Ok((n, u.id)),
        None => bail!("no user {n} (see 'lodge user list')"),
    }
}

async fn command(ctx: &Context, vault: &Vault, audit: &Auditor, c: SecretCmd) -> Result<()> {
    match c {
        SecretCmd::Put { user, name, fields } => {
            let (n, id) = user_id(ctx, &user).await?;
            let values = read_values(&fields)?;
            let written: Vec<String> = values.keys().cloned().collect();
            vault.put(id, &name, values).await?;
            admin(audit, "secret.put", &format!("{n} {name}"));
            eprintln!("stored {} of secret {name} for {n}", written.join(", "));
        }
        SecretCmd::Get { user, name, field } => {
            let (_, id) = user_id(ctx, &user).await?;
            let mut out = std::io::stdout().lock();
            match field {
                Some(f) => {
                    let v = vault.get_field(id, &name, &f).await?;
                    writeln!(out, "{}", v.as_str())?;
                }
                None => {
                    for (f, v) in vault.get(id, &name).await? {
                        writeln!(out, "{f}={}", v.as_str())?;
                    }
                }
            }
        }
        SecretCmd::List { user, json } => {
            let (_, id) = user_id(ctx, &user).await?;
            let list = vault.list(id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<24} FIELDS", "NAME", "UPDATED");
                for s in list {
                    println!("{:<24} {:<24} {}", s.name, s.updated, s.fields.join(","));
                }
            }
        }
        SecretCmd::Delete { user, name, field } => {
            let (n, id) = user_id(ctx, &user).await?;
            vault.delete(id, &name, field.as_deref()).await?;
            admin(audit, "secret.delete", &format!("{n} {name}"));
            eprintln!(
                "deleted secret {name}{} of {n}",
                field.map(|f| format!(" field {f}")).unwrap_or_default()
            );
        }
        SecretCmd::RotateMasterKey => {
            let started = std::time::Instant::now();
            let source = vault.rotate_master_key(&ctx.data_dir).await?;
            admin(audit, "secret.rotate_master_key", "all");
            match source {
                MasterKeySource::File(path) => eprintln!(
                    "rotated the master key in {:.1?}: every data key is re-wrapped; the new key is in {} (back it up; the old key no longer opens this vault)",
                    started.elapsed(),
                    path.display()
                ),
                MasterKeySource::Env => eprintln!(
                    "rotated the master key: every data key is re-wrapped under a new key, written to {}. \
                     LODGE_MASTER_KEY still holds the OLD key: put the file's content into LODGE_MASTER_KEY \
                     wherever the hub is started, then delete the file",
                    ctx.data_dir.join("master.key.new").display()
                ),
            }
        }
    }
    Ok(())
}

fn admin(audit: &Auditor, action: &str, target: &str) {
    audit.admin(AdminAction {
        actor: None,
        action,
        target,
        outcome: "ok",
    });
}

/// Field values for `secret put`: prompted without echo on a terminal, else read from stdin.
fn read_values(fields: &[String]) -> Result<Fields> {
    let mut values = Fields::new();
    if std::io::stdin().is_terminal() {
        if fields.is_empty() {
            bail!("name the fields to set with --field (e.g. --field token)");
        }
        for f in fields {
            let v = rpassword::prompt_password(format!("{f}: "))
                .with_context(|| format!("cannot read the value of {f}"))?;
            values.insert(f.clone(), Zeroizing::new(v));
        }
        return Ok(values);
    }
    let mut input = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut input)
        .context("cannot read the values from stdin")?;
    match fields {
        [one] => {
            let v = input.strip_suffix('\n').unwrap_or(&input);
            values.insert(one.clone(), Zeroizing::new(v.to_owned()));
        }
        _ => {
            for (i, line) in input.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
                let Some((f, v)) = line.split_once('=') else {
                    bail!("stdin line {} is not FIELD=VALUE", i + 1);
                };
                if !fields.is_empty() && !fields.iter().any(|x| x == f) {
                    bail!(
                        "stdin line {} sets field {f:?}, which --field does not name",
                        i + 1
                    );
                }
                values.insert(f.to_owned(), Zeroizing::new(v.to_owned()));
            }
        }
    }
    if values.is_empty() {
        bail!("no values on stdin: pipe the value (one --field) or FIELD=VALUE lines");
    }
    Ok(values)
}
