//! Who may reach a pipeline's pods and how much, as rendered objects: the API's
//! authentication and limit settings, its keys volume, and the NetworkPolicies. Part of
//! [`crate::render`], pure like the rest of it.

use k8s_openapi::api::core::v1::{EnvVar, SecretVolumeSource, Volume, VolumeMount};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, RenderContext, component_name, plain_env};
use crate::crd::{LogPipeline, RateLimit};

/// Where the API pods see the whole API keys Secret, one file per key of the Secret.
pub const API_KEYS_DIR: &str = "/etc/logpipeline/keys";
/// Name of the keys volume in the API pods.
const API_KEYS_VOLUME: &str = "api-keys";

/// The API's settings for authentication, rate and connection limits and trusted
/// proxies. They live in the API container's own environment, not in the settings
/// ConfigMap, so changing them rolls the API pods and leaves the workers be.
///
/// The keys Secret's content is not in here, nor digested into the pod template: the
/// API re-reads the mounted file when the kubelet updates it, without a restart.
pub fn api_env(lp: &LogPipeline) -> Vec<EnvVar> {
    let auth = &lp.spec.auth;
    let api = &lp.spec.api;
    let mut env = Vec::new();
    if auth.enabled {
        env.push(plain_env("LOGPIPELINE_AUTH", "keys".to_owned()));
        // Without a Secret (which the CRD's rule refuses) the API refuses to start.
        if let Some(keys) = &auth.keys_secret_ref {
            env.push(plain_env(
                "LOGPIPELINE_API_KEYS_FILE",
                format!("{API_KEYS_DIR}/{}", keys.key),
            ));
        }
    } else {
        env.push(plain_env("LOGPIPELINE_AUTH", "off".to_owned()));
    }
    let limits = api.rate_limits.clone().unwrap_or_default();
    for (name, limit) in [
        ("LOGPIPELINE_RATE_LIMIT_PER_KEY", limits.per_key),
        ("LOGPIPELINE_RATE_LIMIT_PER_ADDRESS", limits.per_address),
    ] {
        if let Some(limit) = limit {
            env.extend(rate_limit_env(name, limit));
        }
    }
    env.push(plain_env(
        "LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS",
        api.max_connections_per_address.to_string(),
    ));
    if let Some(bytes) = api.body_bytes_in_flight {
        env.push(plain_env(
            "LOGPIPELINE_BODY_BYTES_IN_FLIGHT",
            bytes.to_string(),
        ));
    }
    if !api.trusted_proxies.is_empty() {
        env.push(plain_env(
            "LOGPIPELINE_TRUSTED_PROXIES",
            api.trusted_proxies.join(","),
        ));
    }
    env
}

/// The rate and the burst, always both: the burst the schema documents is the API's.
fn rate_limit_env(name: &str, limit: RateLimit) -> [EnvVar; 2] {
    [
        plain_env(name, limit.requests_per_second.to_string()),
        plain_env(
            &format!("{name}_BURST"),
            limit.effective_burst().to_string(),
        ),
    ]
}

/// The read-only volume of the whole keys Secret and its mount, when auth uses one.
/// The whole Secret (no `subPath`), so the kubelet's updates reach the running pods.
pub fn api_keys_volume(lp: &LogPipeline) -> Option<(Volume, VolumeMount)> {
    let auth = &lp.spec.auth;
    let keys = auth.keys_secret_ref.as_ref().filter(|_| auth.enabled)?;
    let volume = Volume {
        name: API_KEYS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(keys.name.clone()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: API_KEYS_VOLUME.to_owned(),
        mount_path: API_KEYS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

/// The NetworkPolicies of the API and of the workers, or none when disabled.
pub(super) fn network_policies(
    lp: &LogPipeline,
    ctx: &RenderContext,
) -> Option<(NetworkPolicy, NetworkPolicy)> {
    let policy = &lp.spec.api.network_policy;
    if !policy.enabled {
        return None;
    }
    let mut api_peers = policy.ingress_from.clone();
    for peer in &policy.metrics_from {
        if !api_peers.contains(peer) {
            api_peers.push(peer.clone());
        }
    }
    Some((
        network_policy(ctx, Component::Api, &["http", "grpc"], api_peers),
        network_policy(
            ctx,
            Component::Worker,
            &["metrics"],
            policy.metrics_from.clone(),
        ),
    ))
}

/// Admits `peers` to the named ports of the component's pods and nothing else in.
fn network_policy(
    ctx: &RenderContext,
    component: Component,
    ports: &[&str],
    peers: Vec<NetworkPolicyPeer>,
) -> NetworkPolicy {
    // A rule without peers would admit every source: no peers means no rule at all,
    // which admits no one.
    let ingress = if peers.is_empty() {
        Vec::new()
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(peers),
            ports: Some(
                ports
                    .iter()
                    .map(|port| NetworkPolicyPort {
                        port: Some(IntOrString::String((*port).to_owned())),
                        protocol: Some("TCP".to_owned()),
                        end_port: None,
                    })
                    .collect(),
            ),
        }]
    };
    NetworkPolicy {
        metadata: ctx.meta(component_name(&ctx.name, component), component.as_str()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component.as_str())),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Container;
    use k8s_openapi::api::networking::v1::IPBlock;

    use super::*;
    use crate::crd::RateLimit;
    use crate::render::{SETTINGS_CHECKSUM, render};

    fn env(lp: &LogPipeline) -> BTreeMap<String, String> {
        api_env(lp)
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    }

    fn api_container(lp: &LogPipeline) -> Container {
        let children = render(lp, 1, None).unwrap();
        let pod = children.api_deployment.spec.unwrap().template.spec.unwrap();
        pod.containers[0].clone()
    }

    fn peer_labelled(label: &str) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(label.to_owned(), "true".to_owned())])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }
    }

    #[test]
    fn keys_auth_points_the_api_at_the_mounted_secret() {
        let lp = LogPipeline::test();
        let env = env(&lp);
        assert_eq!(env["LOGPIPELINE_AUTH"], "keys");
        assert_eq!(
            env["LOGPIPELINE_API_KEYS_FILE"],
            "/etc/logpipeline/keys/keys.yaml"
        );
        assert_eq!(env["LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS"], "1000");
        for unset in [
            "LOGPIPELINE_RATE_LIMIT_PER_KEY",
            "LOGPIPELINE_RATE_LIMIT_PER_KEY_BURST",
            "LOGPIPELINE_RATE_LIMIT_PER_ADDRESS",
            "LOGPIPELINE_RATE_LIMIT_PER_ADDRESS_BURST",
            "LOGPIPELINE_TRUSTED_PROXIES",
        ] {
            assert!(!env.contains_key(unset), "{unset}");
        }

        let children = render(&lp, 1, None).unwrap();
        let pod = children.api_deployment.spec.unwrap().template.spec.unwrap();
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("logs-api-keys"));
        assert_eq!(
            secret.items, None,
            "the whole Secret, so updates reach the pod"
        );
        let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.read_only
            ),
            (volume.name.as_str(), "/etc/logpipeline/keys", Some(true))
        );
        assert_eq!(mount.sub_path, None, "a subPath mount never sees updates");
        let api = api_container(&lp);
        let names: Vec<_> = api.env.unwrap().into_iter().map(|e| e.name).collect();
        assert!(names.contains(&"LOGPIPELINE_API_KEYS_FILE".to_owned()));

        let worker = children
            .worker_deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(worker.volumes, None, "the workers need no keys");
        let worker_env: Vec<_> = worker.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert!(!worker_env.contains(&"LOGPIPELINE_AUTH"));
    }

    #[test]
    fn the_file_is_named_after_the_secret_key() {
        let mut lp = LogPipeline::test();
        if let Some(keys) = lp.spec.auth.keys_secret_ref.as_mut() {
            keys.key = "tenants.yaml".into();
        }
        assert_eq!(
            env(&lp)["LOGPIPELINE_API_KEYS_FILE"],
            "/etc/logpipeline/keys/tenants.yaml"
        );
    }

    #[test]
    fn auth_off_says_so_and_mounts_nothing() {
        let lp = LogPipeline::test().without_auth();
        let env = env(&lp);
        assert_eq!(env["LOGPIPELINE_AUTH"], "off");
        assert!(!env.contains_key("LOGPIPELINE_API_KEYS_FILE"));
        assert!(api_keys_volume(&lp).is_none());
        let api = api_container(&lp);
        assert_eq!(api.volume_mounts, None);

        // A Secret named while auth is off is not mounted either.
        let mut named = LogPipeline::test();
        named.spec.auth.enabled = false;
        assert!(api_keys_volume(&named).is_none());
        assert_eq!(self::env(&named)["LOGPIPELINE_AUTH"], "off");
    }

    #[test]
    fn limits_and_proxies_are_set_only_when_asked_for() {
        let lp = LogPipeline::test()
            .with_rate_limits(
                Some(RateLimit {
                    requests_per_second: 100,
                    burst: Some(300),
                }),
                Some(RateLimit {
                    requests_per_second: 20,
                    burst: None,
                }),
            )
            .with_trusted_proxies(&["10.244.0.0/16", "fd00::/64"]);
        let env = env(&lp);
        assert_eq!(env["LOGPIPELINE_RATE_LIMIT_PER_KEY"], "100");
        assert_eq!(env["LOGPIPELINE_RATE_LIMIT_PER_KEY_BURST"], "300");
        assert_eq!(env["LOGPIPELINE_RATE_LIMIT_PER_ADDRESS"], "20");
        assert_eq!(
            env["LOGPIPELINE_RATE_LIMIT_PER_ADDRESS_BURST"], "20",
            "one second's worth when no burst is set"
        );
        assert_eq!(
            env["LOGPIPELINE_TRUSTED_PROXIES"],
            "10.244.0.0/16,fd00::/64"
        );

        let only_per_address = LogPipeline::test().with_rate_limits(
            None,
            Some(RateLimit {
                requests_per_second: 5,
                burst: Some(10),
            }),
        );
        let env = self::env(&only_per_address);
        assert!(!env.contains_key("LOGPIPELINE_RATE_LIMIT_PER_KEY"));
        assert_eq!(env["LOGPIPELINE_RATE_LIMIT_PER_ADDRESS_BURST"], "10");

        let mut connections = LogPipeline::test();
        connections.spec.api.max_connections_per_address = 64;
        connections.spec.api.body_bytes_in_flight = Some(128 << 20);
        assert_eq!(
            self::env(&connections)["LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS"],
            "64"
        );
        assert_eq!(
            self::env(&connections)["LOGPIPELINE_BODY_BYTES_IN_FLIGHT"],
            "134217728"
        );
        assert!(!self::env(&LogPipeline::test()).contains_key("LOGPIPELINE_BODY_BYTES_IN_FLIGHT"));
    }

    #[test]
    fn security_settings_roll_only_the_api_and_keys_roll_nothing() {
        let template = |lp: &LogPipeline| {
            let children = render(lp, 1, None).unwrap();
            (
                children.api_deployment.spec.unwrap().template,
                children.worker_deployment.spec.unwrap().template,
            )
        };
        let checksum = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
            t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[SETTINGS_CHECKSUM].clone()
        };
        let (api, worker) = template(&LogPipeline::test());
        let limited = LogPipeline::test().with_rate_limits(
            Some(RateLimit {
                requests_per_second: 10,
                burst: None,
            }),
            None,
        );
        let (limited_api, limited_worker) = template(&limited);
        assert_ne!(api, limited_api, "the API pods roll");
        assert_eq!(worker, limited_worker, "the workers do not");
        assert_eq!(checksum(&api), checksum(&limited_api));
        let annotations = api.metadata.unwrap().annotations.unwrap();
        assert!(
            annotations.keys().all(|k| !k.contains("keys")),
            "no digest of the keys Secret: {annotations:?}"
        );
    }

    #[test]
    fn network_policies_admit_the_listed_peers_to_the_named_ports() {
        let children = render(&LogPipeline::test(), 1, None).unwrap();
        let api = children.api_network_policy.unwrap();
        let worker = children.worker_network_policy.unwrap();
        for (policy, name, component) in [
            (&api, "logs-api", "api"),
            (&worker, "logs-worker", "worker"),
        ] {
            let meta = &policy.metadata;
            assert_eq!(meta.name.as_deref(), Some(name));
            assert_eq!(meta.namespace.as_deref(), Some("default"));
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("LogPipeline", Some(true))
            );
            let spec = policy.spec.as_ref().unwrap();
            let selector = spec
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap();
            assert_eq!(selector["app.kubernetes.io/component"], component);
            assert_eq!(selector["app.kubernetes.io/instance"], "logs");
            assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
            assert_eq!(spec.egress, None, "egress stays open");
        }

        let api_rule = &api.spec.unwrap().ingress.unwrap()[0];
        let api_ports: Vec<_> = api_rule
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|port| port.port.clone())
            .collect();
        assert_eq!(
            api_ports,
            [
                Some(IntOrString::String("http".into())),
                Some(IntOrString::String("grpc".into()))
            ]
        );
        let own_namespace = NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        };
        assert_eq!(
            api_rule.from.as_ref().unwrap(),
            &vec![
                own_namespace,
                peer_labelled("logpipeline.io/api-access"),
                peer_labelled("logpipeline.io/metrics-access"),
            ],
            "ingressFrom, then metricsFrom (which scrapes /metrics on the same port)"
        );
        let worker_rule = &worker.spec.unwrap().ingress.unwrap()[0];
        assert_eq!(
            worker_rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::String("metrics".into()))
        );
        assert_eq!(
            worker_rule.from.as_ref().unwrap(),
            &vec![peer_labelled("logpipeline.io/metrics-access")]
        );
    }

    #[test]
    fn a_peer_in_both_lists_is_listed_once_and_empty_lists_admit_no_one() {
        let prometheus = NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.0.9.0/24".into(),
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        };
        let mut lp = LogPipeline::test();
        lp.spec.api.network_policy.ingress_from = vec![prometheus.clone()];
        lp.spec.api.network_policy.metrics_from = vec![prometheus.clone()];
        let children = render(&lp, 1, None).unwrap();
        let rules = children
            .api_network_policy
            .unwrap()
            .spec
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(rules[0].from, Some(vec![prometheus]));

        lp.spec.api.network_policy.ingress_from = Vec::new();
        lp.spec.api.network_policy.metrics_from = Vec::new();
        let children = render(&lp, 1, None).unwrap();
        for policy in [children.api_network_policy, children.worker_network_policy] {
            let spec = policy.unwrap().spec.unwrap();
            // A rule with no `from` would admit everyone; no rule admits no one.
            assert_eq!(spec.ingress, Some(Vec::new()));
            assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        }
    }

    #[test]
    fn disabled_network_policies_are_not_rendered() {
        let children = render(&LogPipeline::test().without_network_policy(), 1, None).unwrap();
        assert!(children.api_network_policy.is_none());
        assert!(children.worker_network_policy.is_none());
    }
}
