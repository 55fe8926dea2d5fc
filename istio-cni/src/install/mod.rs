//! Installs the CNI plugin on a node: copies the plugin binary into the node's CNI binary
//! directory and chains an `istio-cni` entry into the primary CNI network configuration
//! (the file the container runtime uses: the first `.conflist`/`.conf`/`.json` by name).
//!
//! Installation is idempotent and is re-checked periodically: the primary CNI (Calico,
//! Cilium, flannel, ...) may rewrite its file and drop our entry, which then comes back.
//! The entry is not removed when the agent stops, so an agent upgrade never opens a window
//! in which new pods start unchained; the plugin lets pods start while the agent is away,
//! and the agent captures them when it returns. [`CniInstall::uninstall`] removes it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The plugin type chained into the configuration (and the binary's file name).
pub const PLUGIN_TYPE: &str = "istio-cni";

/// Why the plugin could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The node has no CNI configuration yet (the primary CNI has not written one).
    #[error("no CNI network configuration (.conflist, .conf or .json) in {0}")]
    NoConfig(PathBuf),
    /// The primary configuration is not a CNI network configuration.
    #[error("{path}: not a CNI network configuration: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where to install, and what the chained entry says.
#[derive(Debug, Clone)]
pub struct CniInstall {
    /// The plugin binary to copy (the `istio-cni` beside the agent).
    pub plugin_binary: PathBuf,
    /// The node's CNI binary directory (`/opt/cni/bin`, mounted).
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory (`/etc/cni/net.d`, mounted).
    pub conf_dir: PathBuf,
    /// The agent's plugin-event socket, as the plugin on the host sees it.
    pub agent_socket: PathBuf,
}

/// What [`CniInstall::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The configuration file now carrying the entry.
    pub config: PathBuf,
    /// Whether anything was written (false: it was already installed).
    pub changed: bool,
}

impl CniInstall {
    /// Installs the binary and the chained entry if either is missing or stale.
    pub fn ensure(&self) -> Result<Installed, InstallError> {
        let binary_changed = self.install_binary()?;
        let (path, mut config) = self.primary_config()?;
        let entry = json!({ "type": PLUGIN_TYPE, "agent_socket": self.agent_socket });
        let plugins = plugins_mut(&path, &mut config)?;
        let ours: Vec<usize> = (0..plugins.len())
            .filter(|&i| plugins[i]["type"] == PLUGIN_TYPE)
            .collect();
        let already = ours.len() == 1 && plugins[ours[0]] == entry && ours[0] == plugins.len() - 1;
        let target = path.with_extension("conflist");
        if already && target == path {
            return Ok(Installed {
                config: path,
                changed: binary_changed,
            });
        }
        plugins.retain(|p| p["type"] != PLUGIN_TYPE);
        plugins.push(entry);
        write_atomically(&target, &to_pretty(&config))?;
        if target != path {
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
        tracing::info!(config = %target.display(), "istio-cni chained into the CNI configuration");
        Ok(Installed {
            config: target,
            changed: true,
        })
    }

    /// Removes the chained entry and the binary, leaving the primary CNI as it was.
    pub fn uninstall(&self) -> Result<(), InstallError> {
        match self.primary_config() {
            Ok((path, mut config)) => {
                let plugins = plugins_mut(&path, &mut config)?;
                let before = plugins.len();
                plugins.retain(|p| p["type"] != PLUGIN_TYPE);
                if plugins.len() != before {
                    write_atomically(&path, &to_pretty(&config))?;
                }
            }
            Err(InstallError::NoConfig(_)) => {}
            Err(err) => return Err(err),
        }
        let binary = self.bin_dir.join(PLUGIN_TYPE);
        match fs::remove_file(&binary) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_error(&binary)(err)),
            _ => Ok(()),
        }
    }

    /// Copies the plugin binary if the node's copy is missing or differs.
    fn install_binary(&self) -> Result<bool, InstallError> {
        let wanted = fs::read(&self.plugin_binary).map_err(io_error(&self.plugin_binary))?;
        let target = self.bin_dir.join(PLUGIN_TYPE);
        if fs::read(&target).is_ok_and(|have| have == wanted) {
            return Ok(false);
        }
        fs::create_dir_all(&self.bin_dir).map_err(io_error(&self.bin_dir))?;
        write_atomically(&target, &wanted)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
            .map_err(io_error(&target))?;
        tracing::info!(binary = %target.display(), "istio-cni plugin installed");
        Ok(true)
    }

    /// The primary configuration, as a conflist (a single-plugin `.conf` is wrapped).
    fn primary_config(&self) -> Result<(PathBuf, Value), InstallError> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.conf_dir)
            .map_err(io_error(&self.conf_dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| InstallError::NoConfig(self.conf_dir.clone()))?;
        let text = fs::read_to_string(&path).map_err(io_error(&path))?;
        let invalid = |reason: String| InstallError::Invalid {
            path: path.clone(),
            reason,
        };
        let mut config: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if !config.is_object() {
            return Err(invalid("expected a JSON object".into()));
        }
        if config.get("plugins").is_none() {
            if config.get("type").is_none() {
                return Err(invalid("neither \"plugins\" nor \"type\"".into()));
            }
            let name = config["name"].clone();
            let version = config["cniVersion"].clone();
            config = json!({ "cniVersion": version, "name": name, "plugins": [config] });
        }
        Ok((path, config))
    }
}

fn plugins_mut<'a>(path: &Path, config: &'a mut Value) -> Result<&'a mut Vec<Value>, InstallError> {
    config["plugins"]
        .as_array_mut()
        .ok_or_else(|| InstallError::Invalid {
            path: path.to_path_buf(),
            reason: "\"plugins\" is not a list".into(),
        })
}

fn to_pretty(config: &Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(config).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Writes through a temporary file in the same directory and a rename, so the runtime
/// never reads a half-written file.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), InstallError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot and a non-CNI extension keep the runtime from picking it up.
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&temporary, contents).map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests;
