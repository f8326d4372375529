//! Where a local room's files live under DATA_DIR (the workspace, the room's state directory
//! with its quota volume image and owner marker) and the operations on them: claiming a
//! workspace for a user id, and purging a removed user's files. Nothing else spells this layout.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::leftovers::{self, Leftovers};
use super::volume;

/// A removed user's files could not be claimed or deleted. Each message names the path.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(
        "the workspace of '{user}' belongs to a removed user (id {owner}) of the same name; an \
         operator must delete or move {} and {} (or use 'lodge user remove {user} --purge' \
         next time) before this user can have a room",
        workspace.display(),
        state_dir.display()
    )]
    OwnedByRemovedUser {
        user: String,
        owner: String,
        workspace: PathBuf,
        state_dir: PathBuf,
    },
    #[error("cannot read {}: {error}", path.display())]
    ReadMarker { path: PathBuf, error: io::Error },
    #[error("cannot write {}: {error}", path.display())]
    WriteMarker { path: PathBuf, error: io::Error },
    #[error("cannot unmount the workspace volume {}: {error}", path.display())]
    Unmount { path: PathBuf, error: String },
    #[error("cannot delete {}: {error}", path.display())]
    Delete { path: PathBuf, error: io::Error },
}

/// The room files of one DATA_DIR. User names are validated before they get here (the hub
/// and the CLI only pass names of users), so the paths cannot leave DATA_DIR.
#[derive(Debug, Clone)]
pub struct RoomFiles {
    data_dir: PathBuf,
}

impl RoomFiles {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        RoomFiles {
            data_dir: data_dir.into(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The tag that keeps apart the rooms of hubs with different DATA_DIRs on one machine
    /// (room cgroups are `lodge-<instance>-<user>`), so one hub never mistakes another's room
    /// for a leftover.
    pub fn instance(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.data_dir.as_os_str().as_encoded_bytes());
        hex::encode(&digest[..4])
    }

    /// Where all workspaces live; a mount directly below it is a room's quota volume.
    pub(super) fn workspaces(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }

    /// Where all rooms' state directories (and so their volume images) live.
    pub(super) fn state_dirs(&self) -> PathBuf {
        self.data_dir.join("rooms")
    }

    /// `DATA_DIR/workspaces/NAME`: the user's files, `/workspace` in the room.
    pub fn workspace(&self, user: &str) -> PathBuf {
        self.workspaces().join(user)
    }

    /// `DATA_DIR/rooms/NAME`: the room's own files (volume image, identity files, marker).
    pub fn state_dir(&self, user: &str) -> PathBuf {
        self.state_dirs().join(user)
    }

    /// Workspaces are named by user name, but a name can be reused after its user was removed
    /// without `--purge`. The room's state directory records the user id that owns the
    /// workspace; another id is refused, so a new user never inherits a removed user's files.
    pub fn claim(&self, user: &str, user_id: i64) -> Result<(), FilesError> {
        let state_dir = self.state_dir(user);
        let marker = state_dir.join("owner-id");
        let mine = user_id.to_string();
        match fs::read_to_string(&marker) {
            Ok(owner) if owner.trim() == mine => Ok(()),
            Ok(owner) => Err(FilesError::OwnedByRemovedUser {
                user: user.to_owned(),
                owner: owner.trim().to_owned(),
                workspace: self.workspace(user),
                state_dir,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let write = || -> io::Result<()> {
                    use std::os::unix::fs::DirBuilderExt;
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&state_dir)?;
                    fs::write(&marker, &mine)
                };
                write().map_err(|error| FilesError::WriteMarker {
                    path: marker.clone(),
                    error,
                })
            }
            Err(error) => Err(FilesError::ReadMarker {
                path: marker,
                error,
            }),
        }
    }

    /// What dead rooms of the hub on this DATA_DIR left (for `lodge doctor` and the sweep at
    /// hub start). Reads /proc and /sys only.
    pub fn leftovers(&self) -> Leftovers {
        leftovers::find(self)
    }

    /// Deletes a removed user's workspace (unmounting its quota volume first) and room state
    /// (the volume image, the owner marker). The user's room must be stopped.
    pub fn purge(&self, user: &str) -> Result<(), FilesError> {
        let ws = self.workspace(user);
        volume::unmount(&ws).map_err(|e| FilesError::Unmount {
            path: ws.clone(),
            error: e.to_string(),
        })?;
        for dir in [ws, self.state_dir(user)] {
            if dir.exists() {
                fs::remove_dir_all(&dir)
                    .map_err(|error| FilesError::Delete { path: dir, error })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_lives_under_data_dir() {
        let files = RoomFiles::new("/data");
        assert_eq!(
            files.workspace("alice"),
            Path::new("/data/workspaces/alice")
        );
        assert_eq!(files.state_dir("alice"), Path::new("/data/rooms/alice"));
        assert_eq!(files.instance(), RoomFiles::new("/data").instance());
        assert_ne!(files.instance(), RoomFiles::new("/other").instance());
        assert_eq!(files.instance().len(), 8);
    }

    #[test]
    fn a_workspace_is_claimed_once_and_refused_to_another_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = RoomFiles::new(dir.path());
        files.claim("ru", 7).expect("first claim");
        files.claim("ru", 7).expect("same owner");
        let e = files.claim("ru", 8).expect_err("another id");
        let shown = e.to_string();
        assert!(shown.contains("removed user (id 7)"), "{shown}");
        assert!(shown.contains("--purge"), "{shown}");
        assert!(
            shown.contains(&files.workspace("ru").display().to_string()),
            "{shown}"
        );
    }

    #[test]
    fn purge_deletes_a_users_files_and_frees_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = RoomFiles::new(dir.path());
        files.claim("ru", 7).expect("claim");
        fs::create_dir_all(files.workspace("ru").join("sub")).expect("workspace");
        fs::write(files.workspace("ru").join("sub/f"), "x").expect("file");
        files.claim("bo", 9).expect("another user");
        files.purge("ru").expect("purge");
        assert!(!files.workspace("ru").exists());
        assert!(!files.state_dir("ru").exists());
        assert!(files.state_dir("bo").exists(), "another user's files stay");
        files.claim("ru", 8).expect("the name is free again");
        files.purge("nobody").expect("nothing to purge is fine");
    }
}
