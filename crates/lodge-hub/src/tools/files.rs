//! The workspace file tools (`fs_*`). Each validates its arguments and sends one
//! operation to the caller's room; path confinement is enforced in the room (kernel-checked
//! `openat2` beneath `/workspace`), never here, so this module must not touch the filesystem.

use super::{CallContext, ToolError, ToolSet, define, parse_args, room_result};
use crate::rooms::Rooms;
use async_trait::async_trait;
use lodge_protocol::{Op, OpResult};
use rmcp::model::{CallToolResult, JsonObject, Tool};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Default page of `fs_read`, and its largest.
const READ_PAGE: u64 = 256 * 1024;
const READ_MAX: u64 = 1024 * 1024;

fn dot() -> String {
    ".".into()
}
fn yes() -> bool {
    true
}
fn list_limit() -> u64 {
    1000
}
fn search_limit() -> u64 {
    200
}
fn read_page() -> u64 {
    READ_PAGE
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// List a directory of your workspace.
struct ListArgs {
    /// Directory relative to the workspace root (default: the root).
    #[serde(default = "dot")]
    path: String,
    /// List everything below, not just direct entries (symlinks are not followed).
    #[serde(default)]
    recursive: bool,
    /// Most entries to return (default 1000, at most 10000).
    #[serde(default = "list_limit")]
    limit: u64,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Read a text file, a page at a time.
struct ReadArgs {
    /// File relative to the workspace root.
    path: String,
    /// Byte offset to start at (use `next_offset` from the previous page).
    #[serde(default)]
    offset: u64,
    /// Most bytes to return (default 262144, at most 1048576).
    #[serde(default = "read_page")]
    limit: u64,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Create or replace a file.
struct WriteArgs {
    path: String,
    /// The whole new content (UTF-8 text).
    content: String,
    /// Create missing parent directories (default true).
    #[serde(default = "yes")]
    create_dirs: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Replace exact text in a file.
struct EditArgs {
    path: String,
    /// The exact text to find, including whitespace; it must occur once unless `replace_all`.
    old_text: String,
    /// The text to put in its place.
    new_text: String,
    /// Replace every occurrence instead of requiring exactly one.
    #[serde(default)]
    replace_all: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Delete a file, symlink or directory.
struct DeleteArgs {
    path: String,
    /// Delete a non-empty directory with everything in it.
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Move or rename a file or directory within the workspace.
struct MoveArgs {
    from: String,
    to: String,
    /// Replace `to` if it exists.
    #[serde(default)]
    overwrite: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Create a directory.
struct MkdirArgs {
    path: String,
    /// Create missing parents too (default true); an existing directory is then fine.
    #[serde(default = "yes")]
    parents: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Find files by glob and/or lines by text.
struct SearchArgs {
    /// Directory to search below (default: the whole workspace).
    #[serde(default = "dot")]
    path: String,
    /// Glob on paths relative to `path`, e.g. `**/*.py` or `src/*.rs`.
    glob: Option<String>,
    /// Literal text to find in files (case-sensitive); matches are reported per line.
    text: Option<String>,
    /// Most matches to return (default 200).
    #[serde(default = "search_limit")]
    limit: u64,
}

pub struct FileTools {
    rooms: Arc<Rooms>,
    tools: Vec<Tool>,
}

impl FileTools {
    pub fn new(rooms: Arc<Rooms>) -> Self {
        let tools = vec![
            define::<ListArgs>("fs_list", "List files in your private workspace."),
            define::<ReadArgs>(
                "fs_read",
                "Read a file from your workspace; large files come in pages (see next_offset).",
            ),
            define::<WriteArgs>("fs_write", "Create or overwrite a file in your workspace."),
            define::<EditArgs>(
                "fs_edit",
                "Replace an exact piece of text in a workspace file.",
            ),
            define::<DeleteArgs>("fs_delete", "Delete a file or directory in your workspace."),
            define::<MoveArgs>("fs_move", "Move or rename within your workspace."),
            define::<MkdirArgs>("fs_mkdir", "Create a directory in your workspace."),
            define::<SearchArgs>(
                "fs_search",
                "Search your workspace by glob (file names) and/or literal text (lines).",
            ),
        ];
        Self { rooms, tools }
    }

    /// Turns a tool call into the room operation it stands for.
    fn op(name: &str, args: JsonObject) -> Result<Op, ToolError> {
        Ok(match name {
            "fs_list" => {
                let a: ListArgs = parse_args(name, args)?;
                Op::FsList {
                    path: a.path,
                    recursive: a.recursive,
                    limit: a.limit,
                }
            }
            "fs_read" => {
                let a: ReadArgs = parse_args(name, args)?;
                if a.limit == 0 || a.limit > READ_MAX {
                    return Err(ToolError::invalid(
                        name,
                        format!("limit must be between 1 and {READ_MAX} bytes"),
                    ));
                }
                Op::FsRead {
                    path: a.path,
                    offset: a.offset,
                    limit: a.limit,
                }
            }
            "fs_write" => {
                let a: WriteArgs = parse_args(name, args)?;
                Op::FsWrite {
                    path: a.path,
                    content: a.content,
                    create_dirs: a.create_dirs,
                }
            }
            "fs_edit" => {
                let a: EditArgs = parse_args(name, args)?;
                if a.old_text.is_empty() {
                    return Err(ToolError::invalid(name, "old_text must not be empty"));
                }
                Op::FsEdit {
                    path: a.path,
                    old: a.old_text,
                    new: a.new_text,
                    replace_all: a.replace_all,
                }
            }
            "fs_delete" => {
                let a: DeleteArgs = parse_args(name, args)?;
                Op::FsDelete {
                    path: a.path,
                    recursive: a.recursive,
                }
            }
            "fs_move" => {
                let a: MoveArgs = parse_args(name, args)?;
                Op::FsMove {
                    from: a.from,
                    to: a.to,
                    overwrite: a.overwrite,
                }
            }
            "fs_mkdir" => {
                let a: MkdirArgs = parse_args(name, args)?;
                Op::FsMkdir {
                    path: a.path,
                    parents: a.parents,
                }
            }
            "fs_search" => {
                let a: SearchArgs = parse_args(name, args)?;
                if a.glob.is_none() && a.text.is_none() {
                    return Err(ToolError::invalid(name, "give a glob, a text, or both"));
                }
                Op::FsSearch {
                    path: a.path,
                    glob: a.glob,
                    text: a.text,
                    limit: a.limit,
                }
            }
            other => return Err(ToolError::Failed(format!("unknown tool {other}"))),
        })
    }
}

/// The tool reply for an operation's result: the result's own fields (`Done` becomes
/// `{"ok": true}`), so the reply always shows exactly what the room reported.
pub(super) fn reply(result: &OpResult) -> Value {
    let mut v = serde_json::to_value(result).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
        if o.is_empty() {
            o.insert("ok".into(), Value::Bool(true));
        }
    }
    v
}

#[async_trait]
impl ToolSet for FileTools {
    fn definitions(&self) -> &[Tool] {
        &self.tools
    }

    async fn call(
        &self,
        name: &str,
        args: JsonObject,
        cx: &CallContext<'_>,
    ) -> Result<CallToolResult, ToolError> {
        let op = Self::op(name, args)?;
        let result = room_result(self.rooms.call(cx.caller, op, None).await)?;
        Ok(CallToolResult::structured(reply(&result)))
    }
}
