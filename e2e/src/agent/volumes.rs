//! What the kubelet would prepare before starting a container: volume contents on disk and the
//! container's environment.

use sco_e2e::net::KUBERNETES_SERVICE_IP;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::sandbox::Mount;

/// Reads a field of the pod for the downward API.
pub fn field(pod: &Pod, selector: &ObjectFieldSelector, pod_ip: &str) -> anyhow::Result<String> {
    let path = selector.field_path.as_str();
    let meta = &pod.metadata;
    let lookup = |map: Option<&BTreeMap<String, String>>, key: &str| {
        map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.into(),
        "status.hostIP" | "status.hostIPs" => sco_e2e::net::GATEWAY.into(),
        _ => {
            if let Some(key) = path
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                lookup(meta.labels.as_ref(), key)
            } else if let Some(key) = path
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                lookup(meta.annotations.as_ref(), key)
            } else {
                bail!("unsupported fieldRef {path}")
            }
        }
    })
}

/// Resolves a container's environment as the kubelet does: `envFrom`, then `env` with
/// `valueFrom` and `$(VAR)` expansion, plus the `kubernetes` Service variables.
pub async fn environment(
    client: &Client,
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
    base: &[(String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut env: BTreeMap<String, String> = base.iter().cloned().collect();
    env.insert("HOSTNAME".into(), pod.name_any());
    let kubernetes = format!("tcp://{KUBERNETES_SERVICE_IP}:443");
    for (k, v) in [
        ("KUBERNETES_SERVICE_HOST", KUBERNETES_SERVICE_IP),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", &kubernetes),
        ("KUBERNETES_PORT_443_TCP", &kubernetes),
        ("KUBERNETES_PORT_443_TCP_ADDR", KUBERNETES_SERVICE_IP),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ] {
        env.insert(k.into(), v.into());
    }
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &source.config_map_ref {
            config_map(client, &ns, &r.name, r.optional.unwrap_or(false)).await?
        } else if let Some(r) = &source.secret_ref {
            secret(client, &ns, &r.name, r.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            env.insert(format!("{prefix}{k}"), v);
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field(pod, f, pod_ip)?
            } else if let Some(s) = &from.secret_key_ref {
                let optional = s.optional.unwrap_or(false);
                let data = secret(client, &ns, &s.name, optional).await?;
                match key_of(&data, &s.key, optional, "secret", &s.name)? {
                    Some(v) => v,
                    None => continue,
                }
            } else if let Some(c) = &from.config_map_key_ref {
                let optional = c.optional.unwrap_or(false);
                let data = config_map(client, &ns, &c.name, optional).await?;
                match key_of(&data, &c.key, optional, "configmap", &c.name)? {
                    Some(v) => v,
                    None => continue,
                }
            } else if let Some(r) = &from.resource_field_ref {
                resource_field(container, &r.resource)
            } else {
                continue;
            }
        } else {
            expand(var.value.as_deref().unwrap_or_default(), &env)
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env.into_iter().collect())
}

/// A key of a Secret or ConfigMap for an env var: missing is an error unless optional.
fn key_of(
    data: &BTreeMap<String, String>,
    key: &str,
    optional: bool,
    kind: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    match data.get(key) {
        Some(v) => Ok(Some(v.clone())),
        None if optional => Ok(None),
        None => bail!("{kind} {name} has no key {key}"),
    }
}

fn resource_field(container: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let resources = container.resources.as_ref();
    let map = if kind == "requests" {
        resources.and_then(|r| r.requests.as_ref())
    } else {
        resources.and_then(|r| r.limits.as_ref())
    };
    map.and_then(|m| m.get(name))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "0".into())
}

/// Expands `$(VAR)` references from `env`; `$$` escapes; unknown references stay as written.
pub fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(close) = after.strip_prefix('(').and_then(|a| a.find(')')) {
            let name = &after[1..=close];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &after[close + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        Some(cm) => Ok(cm.data.unwrap_or_default()),
        None if optional => Ok(BTreeMap::new()),
        None => Err(anyhow!("configmap {name} not found")),
    }
}

async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    match Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    {
        Some(s) => Ok(s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect()),
        None if optional => Ok(BTreeMap::new()),
        None => Err(anyhow!("secret {name} not found")),
    }
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
) -> anyhow::Result<()> {
    let pairs: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in pairs {
        let value = data
            .get(&key)
            .with_context(|| format!("key {key} not found"))?;
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, value)?;
    }
    Ok(())
}

async fn service_account_token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    seconds: Option<i64>,
) -> anyhow::Result<String> {
    let ns = pod.namespace().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            "expirationSeconds": seconds.unwrap_or(3607).max(600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()}
        }
    }))?;
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let response: TokenRequest = api
        .create_subresource("token", &account, &PostParams::default(), &request)
        .await?;
    response
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

/// Writes every volume of the pod under `dir` and returns the mounts for `container`.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    container: &Container,
    dir: &Path,
    pod_ip: &str,
) -> anyhow::Result<Vec<Mount>> {
    let ns = pod.namespace().unwrap_or_default();
    let volumes: Vec<Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in &volumes {
        let path = dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&path)?;
        if let Some(cm) = &volume.config_map {
            let data = config_map(client, &ns, &cm.name, cm.optional.unwrap_or(false)).await?;
            write_items(&path, &data, cm.items.as_ref())?;
        } else if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = secret(client, &ns, &name, s.optional.unwrap_or(false)).await?;
            write_items(&path, &data, s.items.as_ref())?;
        } else if let Some(d) = &volume.downward_api {
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    std::fs::write(path.join(&item.path), field(pod, f, pod_ip)?)?;
                }
            }
        } else if let Some(projected) = &volume.projected {
            for source in projected.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let token = service_account_token(
                        client,
                        pod,
                        t.audience.as_deref(),
                        t.expiration_seconds,
                    )
                    .await?;
                    std::fs::write(path.join(&t.path), token)?;
                }
                if let Some(cm) = &source.config_map {
                    let data =
                        config_map(client, &ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                    write_items(&path, &data, cm.items.as_ref())?;
                }
                if let Some(s) = &source.secret {
                    let data = secret(client, &ns, &s.name, s.optional.unwrap_or(false)).await?;
                    write_items(&path, &data, s.items.as_ref())?;
                }
                if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            std::fs::write(path.join(&item.path), field(pod, f, pod_ip)?)?;
                        }
                    }
                }
            }
        } else if volume.empty_dir.is_none() {
            bail!(
                "volume {} has a type the local world does not support (configMap, secret, downwardAPI, projected, emptyDir)",
                volume.name
            );
        }
        sources.insert(volume.name.clone(), path);
    }
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let base = sources
            .get(&m.name)
            .with_context(|| format!("volumeMount {} names no volume", m.name))?;
        let source = match &m.sub_path {
            Some(sub) if !sub.is_empty() => base.join(sub),
            _ => base.clone(),
        };
        mounts.push(Mount::Bind {
            source,
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
            recursive: false,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_like_the_kubelet() {
        let env = BTreeMap::from([("IP".to_string(), "10.244.0.5".to_string())]);
        assert_eq!(
            expand("spark.driver.bindAddress=$(IP)", &env),
            "spark.driver.bindAddress=10.244.0.5"
        );
        assert_eq!(expand("$(MISSING) $$(IP) $x", &env), "$(MISSING) $(IP) $x");
    }
}
