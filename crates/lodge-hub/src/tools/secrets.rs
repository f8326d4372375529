//! The secret tools (`secret_*`, see docs/security.md): the caller's own secrets only, the user
//! coming from the credentials. Values pass through here to and from the vault; they are never
//! logged, and `secret_put`'s audit view leaves them out of the digest.

use super::{Registry, Tool, ToolError};
use crate::context::RequestContext;
use async_trait::async_trait;
use lodge_vault::{Fields, Vault, VaultError};
use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Store a secret's fields (merged into the secret if it exists).
pub struct PutArgs {
    /// Secret name, e.g. `github` (letters, digits, `_`, `-`).
    name: String,
    /// Field names and values, e.g. `{"token": "...", "user": "..."}`.
    fields: BTreeMap<String, String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Read a secret (all fields, or one).
pub struct GetArgs {
    name: String,
    field: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// List your secrets: names and field names, no values.
pub struct ListArgs {}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Delete a secret, or one of its fields.
pub struct DeleteArgs {
    name: String,
    field: Option<String>,
}

/// Adds the secret tools, in the order `tools/list` shows them.
pub fn register(registry: Registry, vault: &Arc<Vault>) -> Registry {
    registry
        .tool(SecretPut {
            vault: vault.clone(),
        })
        .tool(SecretGet {
            vault: vault.clone(),
        })
        .tool(SecretList {
            vault: vault.clone(),
        })
        .tool(SecretDelete {
            vault: vault.clone(),
        })
}

pub struct SecretPut {
    vault: Arc<Vault>,
}

#[async_trait]
impl Tool for SecretPut {
    const NAME: &'static str = "secret_put";
    const DESCRIPTION: &'static str = "Store a secret (API key, token, password) encrypted in \
        your private vault. Use run_command's `secrets` to hand it to a command without showing it.";
    type Args = PutArgs;

    async fn call(&self, a: PutArgs, cx: &RequestContext) -> Result<CallToolResult, ToolError> {
        if a.fields.is_empty() {
            return Err(ToolError::invalid(
                Self::NAME,
                "fields must hold at least one field",
            ));
        }
        let names: Vec<String> = a.fields.keys().cloned().collect();
        let fields: Fields = a
            .fields
            .into_iter()
            .map(|(k, v)| (k, Zeroizing::new(v)))
            .collect();
        self.vault
            .put(cx.caller.user_id, &a.name, fields)
            .await
            .map_err(vault_error)?;
        Ok(CallToolResult::structured(
            json!({ "name": a.name, "fields_written": names }),
        ))
    }

    /// Secret values replaced by a placeholder, so the (unsalted) digest can never be used
    /// to confirm a guessed value.
    fn audit_view<'a>(&self, args: &'a JsonObject) -> Cow<'a, JsonObject> {
        let Some(Value::Object(fields)) = args.get("fields") else {
            return Cow::Borrowed(args);
        };
        let mut view = args.clone();
        let hidden: serde_json::Map<String, Value> = fields
            .keys()
            .map(|k| (k.clone(), Value::String("<value>".into())))
            .collect();
        view.insert("fields".into(), Value::Object(hidden));
        Cow::Owned(view)
    }
}

tool!(
    SecretGet { vault: Arc<Vault> },
    "secret_get",
    "Read one of your secrets (values are shown).",
    |this, a, cx: GetArgs| {
        let (vault, user) = (&this.vault, cx.caller.user_id);
        let reply = match a.field {
            Some(field) => {
                let v = vault
                    .get_field(user, &a.name, &field)
                    .await
                    .map_err(vault_error)?;
                json!({ "name": a.name, "field": field, "value": v.as_str() })
            }
            None => {
                let fields = vault.get(user, &a.name).await.map_err(vault_error)?;
                let shown: serde_json::Map<String, Value> = fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                    .collect();
                json!({ "name": a.name, "fields": shown })
            }
        };
        Ok(CallToolResult::structured(reply))
    }
);

tool!(
    SecretList { vault: Arc<Vault> },
    "secret_list",
    "List your secrets: names and field names, never values.",
    |this, ListArgs {}, cx: ListArgs| {
        let user = cx.caller.user_id;
        let list = this.vault.list(user).await.map_err(vault_error)?;
        Ok(CallToolResult::structured(json!({ "secrets": list })))
    }
);

tool!(
    SecretDelete { vault: Arc<Vault> },
    "secret_delete",
    "Delete one of your secrets or one field.",
    |this, a, cx: DeleteArgs| {
        let user = cx.caller.user_id;
        this.vault
            .delete(user, &a.name, a.field.as_deref())
            .await
            .map_err(vault_error)?;
        let reply = json!({ "deleted": a.name, "field": a.field });
        Ok(CallToolResult::structured(reply))
    }
);

/// A vault error as the caller sees it (messages never carry values).
pub(crate) fn vault_error(e: VaultError) -> ToolError {
    ToolError::Failed(e.to_string())
}
