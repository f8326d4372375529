//! `lodge user …`, `lodge token …` and `lodge mcp-config`: thin wrappers over
//! `lodge_hub::accounts`, which holds the rules, so the CLI and REST API cannot drift apart.

use super::{Context, Create};
use crate::cli::{Global, McpConfigArgs, TokenCmd, UserCmd};
use anyhow::{Result, bail};
use lodge_core::UserName;
use lodge_core::time::rfc3339;
use lodge_hub::Auditor;
use lodge_hub::accounts::{Accounts, TokenRequest};
use lodge_room::spawner::RoomFiles;

fn opt_time(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_else(|| "-".into())
}

/// Opens the store with an audit writer for operator actions, runs `f`, flushes and closes.
async fn with_accounts<F>(g: &Global, create: Create, f: F) -> Result<()>
where
    F: AsyncFnOnce(&Context, &Accounts<'_>) -> Result<()>,
{
    let ctx = Context::open(g, create).await?;
    let audit = Auditor::start(ctx.store.clone());
    let acc = Accounts {
        store: &*ctx.store,
        config: &ctx.config,
        audit: &audit,
        actor: None,
    };
    let result = f(&ctx, &acc).await;
    ctx.close(Some(audit)).await;
    result
}

pub async fn user(g: &Global, c: UserCmd) -> Result<()> {
    let create = if matches!(c, UserCmd::Add { .. }) {
        Create::Yes
    } else {
        Create::No
    };
    with_accounts(g, create, async |ctx, acc| match c {
        UserCmd::Add {
            name,
            admin,
            profile,
        } => {
            let u = acc.add_user(&name, admin, profile.as_deref()).await?;
            eprintln!(
                "added user {}{} (profile {})",
                u.name,
                if u.admin { " (admin)" } else { "" },
                u.profile
            );
            Ok(())
        }
        UserCmd::List { json } => {
            let users = ctx.store.list_users().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!("{:<32} {:<6} {:<16} CREATED", "NAME", "ADMIN", "PROFILE");
                for u in users {
                    println!(
                        "{:<32} {:<6} {:<16} {}",
                        u.name,
                        u.admin,
                        u.profile,
                        rfc3339(u.created_ms)
                    );
                }
            }
            Ok(())
        }
        UserCmd::LoginUrl { name, expires } => {
            let ttl = lodge_core::duration::parse(&expires)?;
            if ttl.is_zero() || ttl > lodge_hub::signin::LINK_MAX_TTL {
                bail!("--expires {expires:?}: give a lifetime above 0 and at most 24h, e.g. 10m");
            }
            let n = UserName::parse(&name)?;
            let Some(u) = ctx.store.user(&n).await? else {
                bail!("no user named {n}: create it with 'lodge user add {n}'");
            };
            let server = &ctx.config.server;
            let url = lodge_hub::signin::mint_login_link(
                &*ctx.store,
                &server.base_url(server.bind),
                &u,
                ttl,
            )
            .await?;
            acc.audit.admin(lodge_hub::audit::AdminAction {
                actor: None,
                action: "user.login_url",
                target: n.as_str(),
                outcome: "ok",
            });
            println!("{url}");
            eprintln!(
                "one-time sign-in link for {n}, valid for {}: it works once; send it privately.",
                lodge_core::duration::format(ttl)
            );
            Ok(())
        }
        UserCmd::Remove { name, purge } => {
            let u = acc.remove_user(&name).await?;
            if purge {
                // The name is validated, so the user's files cannot lie outside DATA_DIR.
                RoomFiles::new(&ctx.data_dir).purge(u.name.as_str())?;
            }
            eprintln!(
                "removed user {}{}",
                u.name,
                if purge { " and purged their data" } else { "" }
            );
            Ok(())
        }
    })
    .await
}

pub async fn token(g: &Global, c: TokenCmd) -> Result<()> {
    with_accounts(g, Create::No, async |ctx, acc| match c {
        TokenCmd::Create {
            name,
            scopes,
            expires,
            note,
        } => {
            let (secret, info) = acc
                .create_token(TokenRequest {
                    creator: None,
                    owner: &name,
                    scopes: scopes.as_deref(),
                    expires: expires.as_deref(),
                    note: &note,
                })
                .await?;
            println!("{secret}");
            eprintln!(
                "created token {} for {} (scopes {}; expires {}). It is shown only once.",
                info.id,
                info.user,
                info.scopes.join(","),
                opt_time(info.expires_ms)
            );
            Ok(())
        }
        TokenCmd::List { name, json } => {
            let n = UserName::parse(&name)?;
            if ctx.store.user(&n).await?.is_none() {
                bail!("no user named {n}: create it with 'lodge user add {n}'");
            }
            let tokens = ctx.store.list_tokens(&n).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!(
                    "{:<10} {:<28} {:<25} {:<25} {:<24} NOTE",
                    "ID", "SCOPES", "EXPIRES", "LAST USED", "CLIENT"
                );
                for t in tokens {
                    println!(
                        "{:<10} {:<28} {:<25} {:<25} {:<24} {}",
                        t.id,
                        t.scopes.join(","),
                        opt_time(t.expires_ms),
                        opt_time(t.last_used_ms),
                        // Client names and notes are free text from whoever made the token
                        // (an OAuth client names itself).
                        t.client
                            .as_deref()
                            .map_or_else(|| "-".into(), lodge_core::text::for_people),
                        lodge_core::text::for_people(&t.note)
                    );
                }
            }
            Ok(())
        }
        TokenCmd::Revoke { id } => {
            let info = acc.revoke_token(&id).await?;
            eprintln!(
                "revoked token {} of {}; a running hub stops accepting it within auth.token_cache ({})",
                info.id,
                info.user,
                humantime::format_duration(ctx.config.auth.token_cache)
            );
            Ok(())
        }
    })
    .await
}

pub async fn mcp_config(g: &Global, a: McpConfigArgs) -> Result<()> {
    let ctx = Context::open(g, Create::No).await?;
    let n = UserName::parse(&a.name)?;
    if ctx.store.user(&n).await?.is_none() {
        bail!("no user named {n}: create it with 'lodge user add {n}'");
    }
    if a.token_env.is_empty()
        || !a
            .token_env
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!("--token-env must be an environment variable name such as LODGE_TOKEN");
    }
    let base = a
        .url
        .or(ctx.config.server.public_url.clone())
        .unwrap_or_else(|| local_url(ctx.config.server.bind));
    let url = format!("{}/user/{n}/mcp", base.trim_end_matches('/'));
    let cfg = serde_json::json!({
        "mcpServers": {
            "lodge": {
                "type": "http",
                "url": url,
                "headers": { "Authorization": format!("Bearer ${{{}}}", a.token_env) }
            }
        }
    });
    println!("{}", serde_json::to_string_pretty(&cfg)?);
    ctx.close(None).await;
    Ok(())
}

/// The URL a local client uses for a bind address: a wildcard bind is reached on loopback.
fn local_url(bind: std::net::SocketAddr) -> String {
    let mut addr = bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}
