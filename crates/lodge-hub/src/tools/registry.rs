//! The tool registry: built from [`Tool`] types (one per built-in tool, its name, arguments,
//! description and handler together) and from [`DynamicTools`] sets whose names depend on the
//! caller (upstream servers). It lists and routes; it must not know any tool by name.

use super::{ToolError, parse_args};
use crate::caller::Caller;
use crate::context::RequestContext;
use async_trait::async_trait;
use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

/// A tool's definition as `tools/list` shows it.
pub type Definition = rmcp::model::Tool;

/// One built-in tool: its name, description and argument type (whose JSON schema is the
/// definition's input schema) beside the code that answers it, so a tool cannot be listed
/// without a handler nor its schema drift from the arguments it parses.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    type Args: DeserializeOwned + JsonSchema + Send + 'static;

    /// Answers a call whose arguments parsed. Bad input is a [`ToolError`], never a panic.
    async fn call(
        &self,
        args: Self::Args,
        cx: &RequestContext,
    ) -> Result<CallToolResult, ToolError>;

    /// The arguments as the audit digest may see them. Tools whose arguments carry secret
    /// values override this to leave them out.
    fn audit_view<'a>(&self, args: &'a JsonObject) -> Cow<'a, JsonObject> {
        Cow::Borrowed(args)
    }
}

/// Tools whose names are known only per caller (an upstream server's `{server}__{tool}`).
#[async_trait]
pub trait DynamicTools: Send + Sync + 'static {
    /// The tools this set offers to `caller`.
    async fn tools(&self, caller: &Caller) -> Vec<Definition>;
    /// Does this set answer `caller`'s call of `name`? `Ok(false)`: not one of this set's
    /// names; `Err`: one of its names, refused before it reaches a tool (not offered to the
    /// caller, or whether it is cannot be told now). Only names that pass are recorded
    /// (metrics, audit), so this is what keeps caller-chosen names out of them.
    async fn offers(&self, caller: &Caller, name: &str) -> Result<bool, ToolError>;
    /// The input schema of `caller`'s tool `name`, if this set has it. Sets that can find one
    /// tool without listing them all should say so here.
    async fn input_schema(&self, caller: &Caller, name: &str) -> Option<Arc<JsonObject>> {
        self.tools(caller)
            .await
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| t.input_schema)
    }
    async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &RequestContext,
    ) -> Result<CallToolResult, ToolError>;
}

/// A [`Tool`] behind one object type: parses the arguments, then calls it.
#[async_trait]
trait Handler: Send + Sync {
    async fn call(
        &self,
        args: JsonObject,
        cx: &RequestContext,
    ) -> Result<CallToolResult, ToolError>;
    fn audit_view<'a>(&self, args: &'a JsonObject) -> Cow<'a, JsonObject>;
}

struct Typed<T>(T);

#[async_trait]
impl<T: Tool> Handler for Typed<T> {
    async fn call(
        &self,
        args: JsonObject,
        cx: &RequestContext,
    ) -> Result<CallToolResult, ToolError> {
        let args = parse_args::<T::Args>(T::NAME, args)?;
        self.0.call(args, cx).await
    }

    fn audit_view<'a>(&self, args: &'a JsonObject) -> Cow<'a, JsonObject> {
        self.0.audit_view(args)
    }
}

#[derive(Clone)]
enum Entry {
    Fixed {
        definition: Definition,
        handler: Arc<dyn Handler>,
    },
    Dynamic(Arc<dyn DynamicTools>),
}

/// Every tool, in the order `tools/list` shows them (the order they were added).
#[derive(Default, Clone)]
pub struct Registry {
    entries: Vec<Entry>,
    names: HashSet<&'static str>,
}

impl Registry {
    /// Adds a built-in tool.
    ///
    /// # Panics
    /// If a tool of the same name is already there: two handlers for one name is a mistake in
    /// the hub's own code, so it stops the hub at start (as axum does for overlapping routes).
    pub fn tool<T: Tool>(mut self, tool: T) -> Self {
        assert!(
            self.names.insert(T::NAME),
            "tool {} is registered twice",
            T::NAME
        );
        self.entries.push(Entry::Fixed {
            definition: Definition::new(
                T::NAME,
                T::DESCRIPTION,
                rmcp::handler::server::common::schema_for_type::<T::Args>(),
            ),
            handler: Arc::new(Typed(tool)),
        });
        self
    }

    /// The built-in tools' names (so far).
    pub fn names(&self) -> HashSet<&'static str> {
        self.names.clone()
    }

    /// Adds a set of tools whose names depend on the caller.
    pub fn dynamic(mut self, set: impl DynamicTools) -> Self {
        self.entries.push(Entry::Dynamic(Arc::new(set)));
        self
    }

    /// The tools `caller` has.
    pub async fn list(&self, caller: &Caller) -> Vec<Definition> {
        let mut all = Vec::new();
        for entry in &self.entries {
            match entry {
                Entry::Fixed { definition, .. } => all.push(definition.clone()),
                Entry::Dynamic(set) => all.extend(set.tools(caller).await),
            }
        }
        all
    }

    /// The input schema of `caller`'s tool `name` (the first that has the name, as for calls).
    pub async fn input_schema(&self, caller: &Caller, name: &str) -> Option<Arc<JsonObject>> {
        for entry in &self.entries {
            match entry {
                Entry::Fixed { definition, .. } if definition.name == name => {
                    return Some(definition.input_schema.clone());
                }
                Entry::Fixed { .. } => {}
                Entry::Dynamic(set) => {
                    if let Some(schema) = set.input_schema(caller, name).await {
                        return Some(schema);
                    }
                }
            }
        }
        None
    }

    /// What answers `caller`'s call of `name`: `Ok(None)` for a name nobody answers for,
    /// `Err` for one refused before any tool runs (see [`DynamicTools::offers`]).
    pub async fn find(&self, caller: &Caller, name: &str) -> Result<Option<Route<'_>>, ToolError> {
        for entry in &self.entries {
            match entry {
                Entry::Fixed {
                    definition,
                    handler,
                } if definition.name == name => {
                    return Ok(Some(Route(Target::Fixed(handler.as_ref()))));
                }
                Entry::Fixed { .. } => {}
                Entry::Dynamic(set) => {
                    if set.offers(caller, name).await? {
                        return Ok(Some(Route(Target::Dynamic(set.as_ref()))));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// The handler of one call's tool, found by [`Registry::find`].
pub struct Route<'a>(Target<'a>);

enum Target<'a> {
    Fixed(&'a dyn Handler),
    Dynamic(&'a dyn DynamicTools),
}

impl Route<'_> {
    /// The arguments as the audit digest may see them.
    pub fn audit_view<'a>(&self, args: &'a JsonObject) -> Cow<'a, JsonObject> {
        match self.0 {
            Target::Fixed(handler) => handler.audit_view(args),
            Target::Dynamic(_) => Cow::Borrowed(args),
        }
    }

    pub async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &RequestContext,
    ) -> Result<CallToolResult, ToolError> {
        match self.0 {
            Target::Fixed(handler) => handler.call(args, cx).await,
            Target::Dynamic(set) => set.call(name, args, cx).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct EchoArgs {
        word: String,
    }

    struct Echo;

    #[async_trait]
    impl Tool for Echo {
        const NAME: &'static str = "echo";
        const DESCRIPTION: &'static str = "Says the word back.";
        type Args = EchoArgs;
        async fn call(
            &self,
            args: EchoArgs,
            _cx: &RequestContext,
        ) -> Result<CallToolResult, ToolError> {
            Ok(CallToolResult::success(vec![ContentBlock::text(args.word)]))
        }
    }

    struct Hidden;

    #[async_trait]
    impl Tool for Hidden {
        const NAME: &'static str = "hidden";
        const DESCRIPTION: &'static str = "Its argument never reaches the audit trail.";
        type Args = EchoArgs;
        async fn call(
            &self,
            _args: EchoArgs,
            _cx: &RequestContext,
        ) -> Result<CallToolResult, ToolError> {
            Ok(CallToolResult::success(vec![]))
        }
        fn audit_view<'a>(&self, _args: &'a JsonObject) -> Cow<'a, JsonObject> {
            Cow::Owned(JsonObject::new())
        }
    }

    /// Offers `up__*` names to the user `alice` only, and refuses `up__secret` to everyone.
    struct Upstream;

    #[async_trait]
    impl DynamicTools for Upstream {
        async fn tools(&self, caller: &Caller) -> Vec<Definition> {
            if caller.user.as_str() != "alice" {
                return vec![];
            }
            vec![Definition::new(
                "up__a",
                "from upstream",
                Arc::new(JsonObject::new()),
            )]
        }
        async fn offers(&self, caller: &Caller, name: &str) -> Result<bool, ToolError> {
            if !name.starts_with("up__") {
                return Ok(false);
            }
            if name == "up__secret" || caller.user.as_str() != "alice" {
                return Err(ToolError::Failed(format!("{name} is not yours")));
            }
            Ok(true)
        }
        async fn call(
            &self,
            name: &str,
            _args: JsonObject,
            _cx: &RequestContext,
        ) -> Result<CallToolResult, ToolError> {
            Ok(CallToolResult::success(vec![ContentBlock::text(name)]))
        }
    }

    fn caller(user: &str) -> Caller {
        Caller {
            user_id: 1,
            user: lodge_core::UserName::parse(user).expect("a valid user name"),
            admin: false,
            profile: "default".into(),
            actor: None,
            groups: std::sync::Arc::from([]),
        }
    }

    fn cx(user: &str) -> RequestContext {
        RequestContext {
            caller: caller(user),
            session_id: None,
            protocol: crate::mcp::version::MODERN,
            client: Default::default(),
            notices: None,
            progress_token: None,
            input_responses: None,
            log_level: None,
        }
    }

    fn registry() -> Registry {
        Registry::default()
            .tool(Echo)
            .dynamic(Upstream)
            .tool(Hidden)
    }

    fn args(v: serde_json::Value) -> JsonObject {
        v.as_object().cloned().expect("an object")
    }

    fn text(r: &CallToolResult) -> String {
        r.content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn lists_in_the_order_added_with_the_schema_of_the_arguments() {
        let names = |tools: Vec<Definition>| -> Vec<String> {
            tools.into_iter().map(|t| t.name.into_owned()).collect()
        };
        let reg = registry();
        assert_eq!(
            names(reg.list(&caller("alice")).await),
            ["echo", "up__a", "hidden"]
        );
        assert_eq!(names(reg.list(&caller("bob")).await), ["echo", "hidden"]);
        let echo = reg.list(&caller("bob")).await.remove(0);
        assert_eq!(echo.description.as_deref(), Some(Echo::DESCRIPTION));
        let schema = serde_json::Value::Object((*echo.input_schema).clone());
        assert_eq!(schema["properties"]["word"]["type"], "string", "{schema}");
    }

    #[tokio::test]
    async fn routes_by_name_and_parses_the_arguments() {
        let reg = registry();
        let cx = cx("alice");
        let route = reg.find(&cx.caller, "echo").await.unwrap().unwrap();
        let answer = route.call("echo", args(serde_json::json!({"word": "hi"})), &cx);
        assert_eq!(text(&answer.await.unwrap()), "hi");
        let bad = route.call("echo", args(serde_json::json!({"word": 7})), &cx);
        match bad.await {
            Err(ToolError::InvalidArguments { tool, reason }) => {
                assert_eq!(tool, "echo");
                assert!(reason.starts_with("word: invalid type"), "{reason}");
                assert!(!reason.contains('7'), "the value is left out: {reason}");
            }
            other => panic!("{:?}", other.map(|r| text(&r))),
        }
        let up = reg.find(&cx.caller, "up__a").await.unwrap().unwrap();
        assert_eq!(
            text(&up.call("up__a", JsonObject::new(), &cx).await.unwrap()),
            "up__a"
        );
    }

    #[tokio::test]
    async fn unknown_names_find_nothing_and_refused_ones_are_errors() {
        let reg = registry();
        let alice = caller("alice");
        for name in ["nope", "", "Echo", "echo "] {
            assert!(reg.find(&alice, name).await.unwrap().is_none(), "{name:?}");
        }
        assert!(reg.find(&alice, "up__secret").await.is_err());
        assert!(reg.find(&caller("bob"), "up__a").await.is_err());
    }

    #[tokio::test]
    async fn the_audit_view_is_the_tools_own() {
        let reg = registry();
        let alice = caller("alice");
        let given = args(serde_json::json!({"word": "hunter2"}));
        for (name, expected) in [("echo", given.clone()), ("hidden", JsonObject::new())] {
            let route = reg.find(&alice, name).await.unwrap().unwrap();
            assert_eq!(*route.audit_view(&given), expected, "{name}");
        }
    }

    #[test]
    #[should_panic(expected = "tool echo is registered twice")]
    fn a_name_registered_twice_stops_the_build() {
        let _ = Registry::default().tool(Echo).tool(Echo);
    }
}
