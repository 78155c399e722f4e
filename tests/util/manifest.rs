//! The kubeadm etcd static pod manifest of the tests, filled in from the one template
//! (`tests/fixtures/kubeadm-etcd.yaml`, which `scripts/lib.sh` fills in too).

const TEMPLATE: &str = include_str!("../fixtures/kubeadm-etcd.yaml");

/// What differs between the manifests of the tests.
pub struct EtcdPod<'a> {
    /// The etcd minor of the image ("3.5", "3.6", "3.7"): the kubeadm generation.
    pub version: &'a str,
    pub name: &'a str,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    /// `--initial-cluster`.
    pub initial_cluster: &'a str,
    /// `--initial-cluster-state`, when the manifest has one.
    pub state: Option<&'a str>,
}

impl EtcdPod<'_> {
    /// The manifest text.
    pub fn render(&self) -> String {
        assert!(
            ["3.5", "3.6", "3.7"].contains(&self.version),
            "no kubeadm generation for etcd {}",
            self.version
        );
        let mut out = String::new();
        for line in TEMPLATE.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.split_once(" #@ ") {
                None => line,
                Some((kept, tags)) => {
                    let selected =
                        |t: &str| t == self.version || (t == "state" && self.state.is_some());
                    if !tags.split(' ').any(selected) {
                        continue;
                    }
                    kept
                }
            };
            out.push_str(
                &line
                    .replace("@NAME@", self.name)
                    .replace("@CLIENT_PORT@", &self.client_port.to_string())
                    .replace("@PEER_PORT@", &self.peer_port.to_string())
                    .replace("@METRICS_PORT@", &self.metrics_port.to_string())
                    .replace("@INITIAL_CLUSTER@", self.initial_cluster)
                    .replace("@STATE@", self.state.unwrap_or("")),
            );
            out.push('\n');
        }
        out
    }
}
