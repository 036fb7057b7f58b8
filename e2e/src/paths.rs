//! Where the world keeps its files: the build cache (outside the work tree) and one state
//! directory per running world.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Pinned versions; the same defaults as `e2e/cluster/build-binaries.sh`.
pub fn k8s_version() -> String {
    std::env::var("K8S_VERSION").unwrap_or_else(|_| "v1.36.3".into())
}
fn coredns_version() -> String {
    std::env::var("COREDNS_VERSION").unwrap_or_else(|_| "v1.15.0".into())
}
/// The pyspark release that stands in for the Spark image.
pub fn pyspark_version() -> String {
    std::env::var("PYSPARK_VERSION").unwrap_or_else(|_| "4.3.0".into())
}

/// The build cache.
pub fn cache() -> PathBuf {
    if let Ok(dir) = std::env::var("SCO_CACHE") {
        return dir.into();
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache")
        });
    base.join("spark-connect-operator")
}

/// A Kubernetes or etcd binary.
pub fn k8s_bin(name: &str) -> PathBuf {
    cache()
        .join(format!("k8s-{}", k8s_version()))
        .join("bin")
        .join(name)
}
/// The CoreDNS binary.
pub fn coredns_bin() -> PathBuf {
    cache()
        .join(format!("coredns-{}", coredns_version()))
        .join("bin/coredns")
}
/// The pyspark venv.
pub fn venv() -> PathBuf {
    cache()
        .join(format!("pyspark-{}", pyspark_version()))
        .join("venv")
}
/// `SPARK_HOME` inside the venv: the pyspark package directory.
pub fn spark_home() -> anyhow::Result<PathBuf> {
    let lib = venv().join("lib");
    for entry in std::fs::read_dir(&lib)? {
        let candidate = entry?.path().join("site-packages/pyspark");
        if candidate.join("jars").is_dir() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no pyspark with jars under {}; run e2e/cluster/build-binaries.sh",
        lib.display()
    )
}

/// Name of the file that marks a state directory as made by `sco-world`.
const STATE_MARKER: &str = ".sco-world-state";

/// Layout of one world's state directory.
#[derive(Clone, Debug)]
pub struct State(pub PathBuf);

impl State {
    /// A path in the state directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }
    /// Kubeconfig for use inside the world (apiserver at 10.244.0.1).
    pub fn inner_kubeconfig(&self) -> PathBuf {
        self.path("pki/admin.kubeconfig")
    }
    /// Kubeconfig for use on the host (apiserver relayed to 127.0.0.1).
    pub fn host_kubeconfig(&self) -> PathBuf {
        self.path("kubeconfig")
    }
    /// The relay socket that dials addresses inside the world.
    pub fn dial_socket(&self) -> PathBuf {
        self.path("dial.sock")
    }
    /// Logs of the world's components.
    pub fn log(&self, name: &str) -> PathBuf {
        self.path(&format!("logs/{name}.log"))
    }
    /// The marker that says this directory was made by `sco-world` and may be wiped.
    pub fn marker(&self) -> PathBuf {
        self.path(STATE_MARKER)
    }
    /// Empties the directory for a new world, refusing one that `sco-world` did not make:
    /// a mistyped `--state` must never delete someone's files.
    pub fn reset(&self) -> anyhow::Result<()> {
        let dir = self.dir();
        let is_empty_or_missing = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e.into()),
        };
        if !is_empty_or_missing {
            anyhow::ensure!(
                self.marker().is_file(),
                "{} is not empty and was not made by sco-world (no {STATE_MARKER} in it); \
                 refusing to delete it: pass a new or empty directory as --state",
                dir.display()
            );
            // Everything but the marker first, the marker last: a reset cut short leaves a
            // directory the next reset still recognises.
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path == self.marker() {
                    continue;
                }
                if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("emptying {}", path.display()))?;
            }
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::write(
            self.marker(),
            "made by sco-world; deleted by the next `sco-world up`\n",
        )?;
        Ok(())
    }
    /// Files of one pod.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.path(&format!("pods/{namespace}_{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_not_made_by_the_world_is_never_deleted() {
        let base = std::env::temp_dir().join(format!("sco-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("precious"), "keep me").unwrap();
        let state = State(base.clone());
        let err = state.reset().unwrap_err().to_string();
        assert!(err.contains("refusing to delete"), "{err}");
        assert!(base.join("precious").exists());

        let fresh = State(base.join("world"));
        fresh.reset().unwrap();
        std::fs::write(fresh.path("old-log"), "x").unwrap();
        fresh.reset().unwrap();
        assert!(
            !fresh.path("old-log").exists(),
            "a world's own directory is wiped"
        );
        assert!(fresh.marker().is_file());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_reset_empties_nested_directories_but_never_what_a_link_points_to() {
        let base = std::env::temp_dir().join(format!("sco-state-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep me").unwrap();
        let world = State(base.join("world"));
        world.reset().unwrap();
        std::fs::create_dir_all(world.path("pods/ns_p/volumes")).unwrap();
        std::fs::write(world.path("pods/ns_p/log"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, world.path("linked")).unwrap();
        world.reset().unwrap();
        assert!(!world.path("pods").exists());
        assert!(!world.path("linked").exists());
        assert!(
            outside.join("precious").exists(),
            "the link's target is kept"
        );
        assert!(world.marker().is_file());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
