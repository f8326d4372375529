//! The workspace file tools (`fs_*`). Each validates its arguments and sends one operation to
//! the caller's room; path confinement is enforced in the room (kernel-checked
//! `openat2` beneath `/workspace`), never here, so this module must not touch the filesystem.

use super::{Registry, ToolError, room_result};
use crate::context::RequestContext;
use crate::rooms::Rooms;
use lodge_protocol::{self as proto, Op, OpResult};
use rmcp::model::CallToolResult;
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
pub struct ListArgs {
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
pub struct ReadArgs {
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
pub struct WriteArgs {
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
pub struct EditArgs {
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
pub struct DeleteArgs {
    path: String,
    /// Delete a non-empty directory with everything in it.
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Move or rename a file or directory within the workspace.
pub struct MoveArgs {
    from: String,
    to: String,
    /// Replace `to` if it exists.
    #[serde(default)]
    overwrite: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Create a directory.
pub struct MkdirArgs {
    path: String,
    /// Create missing parents too (default true); an existing directory is then fine.
    #[serde(default = "yes")]
    parents: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// Find files by glob and/or lines by text.
pub struct SearchArgs {
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

/// Adds the file tools, in the order `tools/list` shows them.
pub fn register(registry: Registry, rooms: &Arc<Rooms>) -> Registry {
    let rooms = || rooms.clone();
    registry
        .tool(FsList { rooms: rooms() })
        .tool(FsRead { rooms: rooms() })
        .tool(FsWrite { rooms: rooms() })
        .tool(FsEdit { rooms: rooms() })
        .tool(FsDelete { rooms: rooms() })
        .tool(FsMove { rooms: rooms() })
        .tool(FsMkdir { rooms: rooms() })
        .tool(FsSearch { rooms: rooms() })
}

/// Defines a file tool: its name, description, and the room operation its arguments stand for.
macro_rules! file_tool {
    ($tool:ident, $name:literal, $description:literal, |$a:ident: $args:ty| $op:expr) => {
        tool!(
            $tool { rooms: Arc<Rooms> },
            $name,
            $description,
            |this, $a, cx: $args| run(&this.rooms, cx, $op).await
        );
    };
}

file_tool!(
    FsList,
    "fs_list",
    "List files in your private workspace.",
    |a: ListArgs| Op::FsList(proto::FsList {
        path: a.path,
        recursive: a.recursive,
        limit: a.limit,
    })
);

file_tool!(
    FsRead,
    "fs_read",
    "Read a file from your workspace; large files come in pages (see next_offset).",
    |a: ReadArgs| {
        if a.limit == 0 || a.limit > READ_MAX {
            return Err(ToolError::invalid(
                Self::NAME,
                format!("limit must be between 1 and {READ_MAX} bytes"),
            ));
        }
        Op::FsRead(proto::FsRead {
            path: a.path,
            offset: a.offset,
            limit: a.limit,
        })
    }
);

file_tool!(
    FsWrite,
    "fs_write",
    "Create or overwrite a file in your workspace.",
    |a: WriteArgs| Op::FsWrite(proto::FsWrite {
        path: a.path,
        content: a.content.into(),
        create_dirs: a.create_dirs,
    })
);

file_tool!(
    FsEdit,
    "fs_edit",
    "Replace an exact piece of text in a workspace file.",
    |a: EditArgs| {
        if a.old_text.is_empty() {
            return Err(ToolError::invalid(Self::NAME, "old_text must not be empty"));
        }
        Op::FsEdit(proto::FsEdit {
            path: a.path,
            old: a.old_text.into(),
            new: a.new_text.into(),
            replace_all: a.replace_all,
        })
    }
);

file_tool!(
    FsDelete,
    "fs_delete",
    "Delete a file or directory in your workspace.",
    |a: DeleteArgs| Op::FsDelete(proto::FsDelete {
        path: a.path,
        recursive: a.recursive,
    })
);

file_tool!(
    FsMove,
    "fs_move",
    "Move or rename within your workspace.",
    |a: MoveArgs| Op::FsMove(proto::FsMove {
        from: a.from,
        to: a.to,
        overwrite: a.overwrite,
    })
);

file_tool!(
    FsMkdir,
    "fs_mkdir",
    "Create a directory in your workspace.",
    |a: MkdirArgs| Op::FsMkdir(proto::FsMkdir {
        path: a.path,
        parents: a.parents,
    })
);

file_tool!(
    FsSearch,
    "fs_search",
    "Search your workspace by glob (file names) and/or literal text (lines).",
    |a: SearchArgs| {
        if a.glob.is_none() && a.text.is_none() {
            return Err(ToolError::invalid(
                Self::NAME,
                "give a glob, a text, or both",
            ));
        }
        Op::FsSearch(proto::FsSearch {
            path: a.path,
            glob: a.glob,
            text: a.text,
            limit: a.limit,
        })
    }
);

/// Sends one operation to the caller's room; its result is the reply.
async fn run(rooms: &Rooms, cx: &RequestContext, op: Op) -> Result<CallToolResult, ToolError> {
    let result = room_result(rooms.call(&cx.caller, op, None).await)?;
    Ok(CallToolResult::structured(reply(&result)))
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
