//! Which API resource serves which of the snapshot's resource trees. `inspect` names a tree by
//! its etcd key (`configmaps`, `services/specs`, `example.com/widgets`, see
//! `inspect::k8s::classify`); the API server names it by group and plural. Built-in resources
//! are stored under their plural, a few under an older name (`STORED_AS`), and resources of
//! groups that are not built in (CRDs, `apiservices`, `customresourcedefinitions`) under
//! `<group>/<plural>`. Pure.

use serde_json::Value;

/// Built-in resources stored under another name than their plural.
const STORED_AS: &[(&str, &str, &str)] = &[
    ("", "services", "services/specs"),
    ("", "endpoints", "services/endpoints"),
    ("", "nodes", "minions"),
    ("", "replicationcontrollers", "controllers"),
    ("networking.k8s.io", "ingresses", "ingress"),
];

/// A listable resource the API server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiResource {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    /// The plural.
    pub name: String,
}

impl ApiResource {
    /// Its list path across namespaces.
    pub(super) fn path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.name)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.name)
        }
    }

    /// `secrets`, `widgets.example.com`: as kubectl names it.
    pub(super) fn shown(&self) -> String {
        if self.group.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.group)
        }
    }

    /// How well it matches the snapshot tree `stored` (lower is better); `None`: not at all.
    fn rank(&self, stored: &str) -> Option<u8> {
        let renamed = STORED_AS
            .iter()
            .find(|(g, n, _)| *g == self.group && *n == self.name)
            .map(|(_, _, s)| *s);
        if let Some(s) = renamed {
            return (s == stored).then_some(0);
        }
        if !self.group.is_empty() && stored == format!("{}/{}", self.group, self.name) {
            return Some(1);
        }
        // Built-in resources of two groups may share a tree (`events`): the core one serves it.
        (stored == self.name).then_some(if self.group.is_empty() { 2 } else { 3 })
    }
}

/// The resource that serves the snapshot tree `stored`, if any.
pub(super) fn serving<'a>(stored: &str, served: &'a [ApiResource]) -> Option<&'a ApiResource> {
    served
        .iter()
        .filter_map(|r| r.rank(stored).map(|k| (k, r)))
        .min_by_key(|(k, _)| *k)
        .map(|(_, r)| r)
}

/// The listable resources of an `APIResourceList` (`/api/v1`, `/apis/<group>/<version>`);
/// subresources (`pods/log`) are left out.
pub(super) fn resource_list(doc: &Value) -> Vec<ApiResource> {
    let gv = doc["groupVersion"].as_str().unwrap_or_default();
    let (group, version) = gv.split_once('/').unwrap_or(("", gv));
    doc["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["verbs"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == "list"))
        })
        .filter_map(|r| r["name"].as_str())
        .filter(|n| !n.contains('/'))
        .map(|n| ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            name: n.to_string(),
        })
        .collect()
}

/// The preferred `group/version` of every group of an `APIGroupList` (`/apis`).
pub(super) fn preferred_versions(doc: &Value) -> Vec<String> {
    doc["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["preferredVersion"]["groupVersion"].as_str())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(group: &str, name: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: "v1".into(),
            name: name.into(),
        }
    }

    #[test]
    fn each_tree_finds_the_resource_that_serves_it() {
        let served = vec![
            r("", "services"),
            r("", "endpoints"),
            r("", "nodes"),
            r("", "events"),
            r("", "secrets"),
            r("events.k8s.io", "events"),
            r("networking.k8s.io", "ingresses"),
            r("apps", "deployments"),
            r("example.com", "widgets"),
            r("apiregistration.k8s.io", "apiservices"),
        ];
        let shown = |s: &str| serving(s, &served).map(ApiResource::shown);
        assert_eq!(shown("services/specs").as_deref(), Some("services"));
        assert_eq!(shown("services/endpoints").as_deref(), Some("endpoints"));
        assert_eq!(shown("minions").as_deref(), Some("nodes"));
        assert_eq!(shown("events").as_deref(), Some("events"));
        assert_eq!(
            shown("ingress").as_deref(),
            Some("ingresses.networking.k8s.io")
        );
        assert_eq!(shown("deployments").as_deref(), Some("deployments.apps"));
        assert_eq!(
            shown("example.com/widgets").as_deref(),
            Some("widgets.example.com")
        );
        assert_eq!(
            shown("apiregistration.k8s.io/apiservices").as_deref(),
            Some("apiservices.apiregistration.k8s.io")
        );
        // Not an API resource: the service IP allocator, the master leases.
        assert_eq!(shown("ranges"), None);
        assert_eq!(shown("masterleases"), None);
        // A renamed resource does not also serve its plural's tree.
        assert_eq!(shown("services"), None);
        assert_eq!(r("", "secrets").path(), "/api/v1/secrets");
        assert_eq!(r("apps", "deployments").path(), "/apis/apps/v1/deployments");
    }

    #[test]
    fn discovery_documents_give_listable_top_level_resources() {
        let doc: Value = serde_json::from_str(
            r#"{"groupVersion":"apps/v1","resources":[
                {"name":"deployments","verbs":["get","list","watch"]},
                {"name":"deployments/scale","verbs":["get","list"]},
                {"name":"tokenreviews","verbs":["create"]}]}"#,
        )
        .unwrap();
        assert_eq!(resource_list(&doc), vec![r("apps", "deployments")]);
        let core: Value = serde_json::from_str(
            r#"{"groupVersion":"v1","resources":[{"name":"secrets","verbs":["list"]}]}"#,
        )
        .unwrap();
        assert_eq!(resource_list(&core), vec![r("", "secrets")]);
        let groups: Value = serde_json::from_str(
            r#"{"groups":[{"name":"apps","preferredVersion":{"groupVersion":"apps/v1"}}]}"#,
        )
        .unwrap();
        assert_eq!(preferred_versions(&groups), vec!["apps/v1".to_string()]);
    }
}
