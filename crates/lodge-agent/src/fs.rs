//! Maps the `fs_*` operations of the protocol onto the [`Workspace`] and its results and errors
//! back onto the protocol. Path checks live in the workspace; this module only translates and
//! never echoes file contents into errors or logs.

use crate::workspace::{Workspace, WsError};
use lodge_protocol::{
    Entry, ErrorKind, FsDelete, FsEdit, FsList, FsMkdir, FsMove, FsRead, FsSearch, FsWrite, Op,
    OpError, OpResult,
};

impl From<WsError> for OpError {
    fn from(error: WsError) -> Self {
        let kind = match &error {
            WsError::InvalidPath { .. } | WsError::Escape { .. } => ErrorKind::InvalidPath,
            WsError::NotFound { .. } => ErrorKind::NotFound,
            WsError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            WsError::NotADirectory { .. } => ErrorKind::NotADirectory,
            WsError::IsADirectory { .. } => ErrorKind::IsADirectory,
            WsError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            WsError::TooLarge { .. } => ErrorKind::TooLarge,
            // The file is fine; the `old` text argument does not identify one place in it.
            WsError::NotFoundText { .. } | WsError::Ambiguous { .. } => ErrorKind::InvalidArgument,
            WsError::Io { .. } => ErrorKind::Io,
        };
        OpError::new(kind, error.to_string())
    }
}

/// A `limit` from the wire as a count (the workspace clamps it to its own bounds).
fn count(limit: u64) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Performs one file operation (blocking: call from `spawn_blocking`). `None` when `op` is not
/// a file operation.
pub(crate) fn run(ws: &Workspace, op: Op) -> Option<Result<OpResult, OpError>> {
    let result = match op {
        Op::FsList(request) => list(ws, request),
        Op::FsRead(request) => read(ws, request),
        Op::FsWrite(request) => write(ws, request),
        Op::FsEdit(request) => edit(ws, request),
        Op::FsDelete(FsDelete { path, recursive }) => {
            ws.delete(&path, recursive).map(|()| OpResult::Done)
        }
        Op::FsMove(FsMove {
            from,
            to,
            overwrite,
        }) => ws.rename(&from, &to, overwrite).map(|()| OpResult::Done),
        Op::FsMkdir(FsMkdir { path, parents }) => ws.mkdir(&path, parents).map(|()| OpResult::Done),
        Op::FsSearch(request) => search(ws, request),
        Op::Ping | Op::RunCommand(_) | Op::Exec(_) | Op::Upstream(_) | Op::Jupyter(_) => {
            return None;
        }
    };
    Some(result.map_err(OpError::from))
}

fn list(ws: &Workspace, request: FsList) -> Result<OpResult, WsError> {
    let listing = ws.list(&request.path, request.recursive, count(request.limit))?;
    Ok(OpResult::Entries {
        entries: listing
            .entries
            .into_iter()
            .map(|e| Entry {
                path: e.path,
                kind: e.kind,
                size: e.size.unwrap_or(0),
            })
            .collect(),
        truncated: listing.truncated,
    })
}

fn read(ws: &Workspace, request: FsRead) -> Result<OpResult, WsError> {
    let page = ws.read(&request.path, request.offset, request.limit)?;
    Ok(OpResult::Read {
        content: page.content,
        offset: page.offset,
        next_offset: page.next_offset,
        total_size: page.total_size,
        eof: page.eof,
        lossy: page.lossy,
    })
}

fn write(ws: &Workspace, request: FsWrite) -> Result<OpResult, WsError> {
    let content = request.content.expose();
    ws.write(&request.path, content.as_bytes(), request.create_dirs)?;
    Ok(OpResult::Written {
        bytes: content.len() as u64,
    })
}

fn edit(ws: &Workspace, request: FsEdit) -> Result<OpResult, WsError> {
    let (old, new) = (request.old.expose(), request.new.expose());
    let n = ws.edit(&request.path, old, new, request.replace_all)?;
    Ok(OpResult::Edited {
        replacements: u32::try_from(n).unwrap_or(u32::MAX),
    })
}

fn search(ws: &Workspace, request: FsSearch) -> Result<OpResult, WsError> {
    let FsSearch {
        path,
        glob,
        text,
        limit,
    } = request;
    let found = ws.search(&path, glob.as_deref(), text.as_deref(), count(limit))?;
    Ok(OpResult::Matches {
        matches: found.matches,
        truncated: found.truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workspace_error_maps_to_its_kind() {
        let p = || "a".to_string();
        let cases = [
            (
                WsError::InvalidPath {
                    path: p(),
                    reason: "r".into(),
                },
                ErrorKind::InvalidPath,
            ),
            (WsError::Escape { path: p() }, ErrorKind::InvalidPath),
            (WsError::NotFound { path: p() }, ErrorKind::NotFound),
            (
                WsError::AlreadyExists {
                    path: p(),
                    hint: String::new(),
                },
                ErrorKind::AlreadyExists,
            ),
            (
                WsError::NotADirectory { path: p() },
                ErrorKind::NotADirectory,
            ),
            (
                WsError::IsADirectory {
                    path: p(),
                    hint: String::new(),
                },
                ErrorKind::IsADirectory,
            ),
            (
                WsError::PermissionDenied {
                    path: p(),
                    reason: "r".into(),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                WsError::TooLarge {
                    path: p(),
                    size: 2,
                    max: 1,
                    hint: String::new(),
                },
                ErrorKind::TooLarge,
            ),
            (
                WsError::NotFoundText { path: p() },
                ErrorKind::InvalidArgument,
            ),
            (
                WsError::Ambiguous {
                    path: p(),
                    count: 2,
                },
                ErrorKind::InvalidArgument,
            ),
            (
                WsError::Io {
                    op: "read",
                    path: p(),
                    source: std::io::Error::other("x"),
                },
                ErrorKind::Io,
            ),
        ];
        for (error, kind) in cases {
            let shown = error.to_string();
            let mapped = OpError::from(error);
            assert_eq!(mapped.kind, kind, "{shown}");
            assert_eq!(mapped.message, shown);
        }
    }
}
