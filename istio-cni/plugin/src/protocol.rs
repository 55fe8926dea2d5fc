//! The CNI protocol's data: environment, network configuration, results and errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Container added.
    Add,
    /// Container deleted.
    Del,
    /// Verify the container's networking.
    Check,
    /// Report supported versions.
    Version,
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: CniCommand,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs (`K8S_POD_NAME`, `K8S_POD_NAMESPACE`, ...).
    pub args: BTreeMap<String, String>,
}

impl CniEnv {
    /// Reads the environment through `get` (e.g. `std::env::var`).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => CniCommand::Add,
            Some("DEL") => CniCommand::Del,
            Some("CHECK") => CniCommand::Check,
            Some("VERSION") => CniCommand::Version,
            Some(other) => {
                return Err(CniError::new(
                    "1.0.0",
                    4,
                    &format!("unknown CNI_COMMAND {other:?}"),
                ));
            }
            None => {
                return Err(CniError::new(
                    "1.0.0",
                    4,
                    "CNI_COMMAND is not set: this program is run by the container runtime",
                ));
            }
        };
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        })
    }
}

/// The network configuration on stdin (unknown keys, such as `runtimeConfig`, are fine).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of this configuration.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin type (`istio-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The previous plugin's result, for chained plugins.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// Where to append log lines.
    #[serde(default, rename = "log_file")]
    pub log_file: Option<PathBuf>,
    /// The node agent's plugin-event socket.
    #[serde(default, rename = "agent_socket")]
    pub agent_socket: Option<PathBuf>,
}

impl NetConf {
    /// Parses stdin, naming what is wrong.
    pub fn parse(stdin: &str) -> Result<Self, CniError> {
        serde_json::from_str(stdin)
            .map_err(|err| CniError::new("1.0.0", 6, &format!("network configuration: {err}")))
    }

    /// The agent socket to notify.
    pub fn agent_socket(&self) -> PathBuf {
        self.agent_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_AGENT_SOCKET))
    }
}

/// What the plugin tells the node agent about a new pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEvent {
    /// Pod namespace (`K8S_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// Pod name (`K8S_POD_NAME`).
    pub pod_name: String,
    /// Path of its network namespace (`CNI_NETNS`).
    pub netns: String,
}

impl PluginEvent {
    /// The event for an ADD, which needs the pod's name, namespace and netns.
    pub fn from_env(env: &CniEnv) -> Result<Self, CniError> {
        let arg = |key: &str| env.args.get(key).cloned().filter(|v| !v.is_empty());
        match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
            (Some(pod_namespace), Some(pod_name)) if !env.netns.is_empty() => Ok(PluginEvent {
                pod_namespace,
                pod_name,
                netns: env.netns.clone(),
            }),
            _ => Err(CniError::new(
                "1.0.0",
                4,
                "ADD needs CNI_NETNS and K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS",
            )),
        }
    }
}

/// A CNI error result (printed on stdout, with a non-zero exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    /// Spec version.
    pub cni_version: String,
    /// Error code (spec: 4 invalid environment, 6 decoding failure, 7 invalid configuration).
    pub code: u32,
    /// Message.
    pub msg: String,
}

impl CniError {
    /// An error of `code`.
    pub fn new(cni_version: &str, code: u32, msg: &str) -> Self {
        CniError {
            cni_version: cni_version.to_string(),
            code,
            msg: msg.to_string(),
        }
    }

    /// The JSON the runtime reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The VERSION answer.
pub(super) fn version_result(stdin: &str) -> String {
    let asked = serde_json::from_str::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| "1.0.0".to_string());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": super::SUPPORTED_VERSIONS })
        .to_string()
}

/// The previous result, unchanged except for carrying the configuration's version.
pub(super) fn pass_through(cni_version: &str, mut prev: serde_json::Value) -> String {
    if let Some(object) = prev.as_object_mut() {
        object.insert(
            "cniVersion".into(),
            serde_json::Value::String(cni_version.to_string()),
        );
    }
    prev.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_vars(|key| vars.get(key).cloned())
    }

    #[test]
    fn reads_the_environment_and_args() {
        let env = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
            ),
        ])
        .unwrap();
        assert_eq!(env.command, CniCommand::Add);
        let event = PluginEvent::from_env(&env).unwrap();
        assert_eq!(
            (
                event.pod_namespace.as_str(),
                event.pod_name.as_str(),
                event.netns.as_str()
            ),
            ("shop", "web-0", "/var/run/netns/cni-1")
        );
    }

    #[test]
    fn bad_input_gets_spec_error_codes() {
        assert_eq!(env(&[]).unwrap_err().code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code, 4);
        let err = NetConf::parse("{not json").unwrap_err();
        assert_eq!(err.code, 6);
        assert!(err.to_json().contains(r#""code":6"#), "{}", err.to_json());
        let add_without_pod = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/x")]).unwrap();
        assert_eq!(PluginEvent::from_env(&add_without_pod).unwrap_err().code, 4);
    }

    #[test]
    fn version_and_pass_through() {
        let version: serde_json::Value =
            serde_json::from_str(&version_result(r#"{"cniVersion":"0.4.0"}"#)).unwrap();
        assert_eq!(version["cniVersion"], "0.4.0");
        assert!(
            version["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "1.0.0")
        );
        let prev =
            serde_json::json!({"cniVersion": "0.4.0", "ips": [{"address": "10.244.1.2/24"}]});
        let out: serde_json::Value = serde_json::from_str(&pass_through("1.0.0", prev)).unwrap();
        assert_eq!(out["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(out["cniVersion"], "1.0.0");
    }
}
