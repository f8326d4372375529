//! The secret tools (`secret_put`, `secret_get`, `secret_list`, `secret_delete`):
//! the caller's own secrets only (the user comes from the credentials, never from arguments).
//! Values pass through here on their way to and from the vault; they are never logged, and the
//! audit digest of these calls leaves them out (see [`audit_view`]).

use super::{CallContext, ToolError, ToolSet, define, parse_args};
use async_trait::async_trait;
use lodge_vault::{Fields, Vault, VaultError};
use rmcp::model::{CallToolResult, JsonObject, Tool};
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
struct PutArgs {
    /// Secret name, e.g. `github` (letters, digits, `_`, `-`).
    name: String,
    /// Field names and values, e.g. `{"token": "...", "user": "..."}`.
    fields: BTreeMap<String, String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Read a secret (all fields, or one).
struct GetArgs {
    name: String,
    field: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// List your secrets: names and field names, no values.
struct ListArgs {}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Delete a secret, or one of its fields.
struct DeleteArgs {
    name: String,
    field: Option<String>,
}

pub struct SecretTools {
    vault: Arc<Vault>,
    tools: Vec<Tool>,
}

impl SecretTools {
    pub fn new(vault: Arc<Vault>) -> Self {
        let tools = vec![
            define::<PutArgs>(
                "secret_put",
                "Store a secret (API key, token, password) encrypted in your private vault. \
                 Use run_command's `secrets` to hand it to a command without showing it.",
            ),
            define::<GetArgs>("secret_get", "Read one of your secrets (values are shown)."),
            define::<ListArgs>(
                "secret_list",
                "List your secrets: names and field names, never values.",
            ),
            define::<DeleteArgs>("secret_delete", "Delete one of your secrets or one field."),
        ];
        Self { vault, tools }
    }
}

/// A vault error as the caller sees it (messages never carry values).
pub(crate) fn vault_error(e: VaultError) -> ToolError {
    ToolError::Failed(e.to_string())
}

#[async_trait]
impl ToolSet for SecretTools {
    fn definitions(&self) -> &[Tool] {
        &self.tools
    }

    async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &CallContext<'_>,
    ) -> Result<CallToolResult, ToolError> {
        let user = cx.caller.user_id;
        let reply = match name {
            "secret_put" => {
                let a: PutArgs = parse_args(name, args)?;
                if a.fields.is_empty() {
                    return Err(ToolError::invalid(
                        name,
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
                    .put(user, &a.name, fields)
                    .await
                    .map_err(vault_error)?;
                json!({ "name": a.name, "fields_written": names })
            }
            "secret_get" => {
                let a: GetArgs = parse_args(name, args)?;
                match a.field {
                    Some(field) => {
                        let v = self
                            .vault
                            .get_field(user, &a.name, &field)
                            .await
                            .map_err(vault_error)?;
                        json!({ "name": a.name, "field": field, "value": v.as_str() })
                    }
                    None => {
                        let fields = self.vault.get(user, &a.name).await.map_err(vault_error)?;
                        let shown: serde_json::Map<String, Value> = fields
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                            .collect();
                        json!({ "name": a.name, "fields": shown })
                    }
                }
            }
            "secret_list" => {
                let ListArgs {} = parse_args(name, args)?;
                let list = self.vault.list(user).await.map_err(vault_error)?;
                json!({ "secrets": list })
            }
            "secret_delete" => {
                let a: DeleteArgs = parse_args(name, args)?;
                self.vault
                    .delete(user, &a.name, a.field.as_deref())
                    .await
                    .map_err(vault_error)?;
                json!({ "deleted": a.name, "field": a.field })
            }
            other => return Err(ToolError::Failed(format!("unknown tool {other}"))),
        };
        Ok(CallToolResult::structured(reply))
    }

    /// Secret values replaced by a placeholder, so the (unsalted) digest can never be used
    /// to confirm a guessed value.
    fn audit_view<'a>(&self, name: &str, args: &'a JsonObject) -> Cow<'a, JsonObject> {
        let Some(Value::Object(fields)) = args.get("fields").filter(|_| name == "secret_put")
        else {
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
