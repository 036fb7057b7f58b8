//! Images the agent can run, emulated from files on this machine: the layout of the official
//! `apache/spark` image from the cached pyspark venv, and this project's own images from the
//! binaries built in the work tree. Anything else cannot be pulled.

use std::path::PathBuf;

use crate::paths;
use crate::sandbox::Mount;

/// What an image contributes to a pod.
#[derive(Clone, Debug, Default)]
pub struct ImageLayout {
    /// Mounts that make up the image's files.
    pub mounts: Vec<Mount>,
    /// The image's environment.
    pub env: Vec<(String, String)>,
    /// ENTRYPOINT + CMD.
    pub default_argv: Vec<String>,
    /// WORKDIR.
    pub workdir: String,
}

const ENTRYPOINT: &str = include_str!("../../images/spark/entrypoint.sh");

fn java_home() -> String {
    std::fs::canonicalize("/usr/bin/java")
        .ok()
        .and_then(|java| {
            java.parent()?
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "/usr/lib/jvm/java-17-openjdk-amd64".into())
}

fn base_env(extra_path: &str) -> Vec<(String, String)> {
    vec![(
        "PATH".into(),
        format!("{extra_path}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    )]
}

/// The binary that a project image runs: `SCO_<NAME>_BIN`, or next to this program.
fn project_binary(name: &str) -> PathBuf {
    let var = format!("SCO_{}_BIN", name.to_uppercase().replace('-', "_"));
    std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join(name)))
            .unwrap_or_else(|| name.into())
    })
}

fn repository(image: &str) -> (&str, &str) {
    let (repo, tag) = match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    };
    (repo.rsplit('/').next().unwrap_or(repo), tag)
}

/// Where Spark's launcher is in an image.
const SPARK_SUBMIT: &str = "/opt/spark/bin/spark-submit";

/// The layout of `image`, or why it cannot be pulled.
pub fn resolve(image: &str, state_dir: &std::path::Path) -> Result<ImageLayout, String> {
    let (name, tag) = repository(image);
    match name {
        "spark" if tag.starts_with('4') => {
            spark(state_dir).map_err(|e| format!("emulating {image}: {e}"))
        }
        "spark-connect-operator" | "sco-fake-connect" | "sco-opa-authz" => {
            let binary = project_binary(name);
            if !binary.is_file() {
                return Err(format!("{image}: binary {} is not built", binary.display()));
            }
            // The fake Connect server also answers to Spark's launcher, so that a pool of fake
            // servers runs the operator's own command line.
            let targets = match name {
                "sco-fake-connect" => vec![format!("/{name}"), SPARK_SUBMIT.to_string()],
                _ => vec![format!("/{name}")],
            };
            Ok(ImageLayout {
                mounts: targets
                    .into_iter()
                    .map(|target| Mount::Bind {
                        source: binary.clone(),
                        target,
                        read_only: true,
                        recursive: false,
                    })
                    .collect(),
                env: base_env(""),
                default_argv: vec![format!("/{name}")],
                workdir: "/".into(),
            })
        }
        _ => Err(format!(
            "image {image} is not available in the local world (known: apache/spark:4.*, spark-connect-operator, sco-fake-connect, sco-opa-authz)"
        )),
    }
}

fn spark(state_dir: &std::path::Path) -> anyhow::Result<ImageLayout> {
    let home = paths::spark_home()?;
    let entrypoint = state_dir.join("entrypoint.sh");
    if !entrypoint.exists() {
        std::fs::write(&entrypoint, ENTRYPOINT)?;
        std::fs::set_permissions(
            &entrypoint,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    // /opt/spark is a tmpfs with read-only binds of the venv's directories, so mounts such as
    // conf/ never write into the shared cache.
    let mut mounts = vec![Mount::Tmpfs {
        target: "/opt/spark".into(),
    }];
    let mut entries: Vec<_> = std::fs::read_dir(&home)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        let Some(file) = entry.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        if entry.is_dir() && file != "__pycache__" {
            mounts.push(Mount::Bind {
                source: entry,
                target: format!("/opt/spark/{file}"),
                read_only: true,
                recursive: false,
            });
        }
    }
    mounts.push(Mount::Tmpfs {
        target: "/opt/spark/work-dir".into(),
    });
    mounts.push(Mount::Bind {
        source: entrypoint,
        target: "/opt/entrypoint.sh".into(),
        read_only: true,
        recursive: false,
    });
    let mut env = base_env("/opt/spark/bin:");
    env.push(("SPARK_HOME".into(), "/opt/spark".into()));
    env.push(("JAVA_HOME".into(), java_home()));
    Ok(ImageLayout {
        mounts,
        env,
        default_argv: vec!["/opt/entrypoint.sh".into()],
        workdir: "/opt/spark/work-dir".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_and_tag() {
        assert_eq!(
            repository("apache/spark:4.1.1-scala2.13-java17-python3-ubuntu"),
            ("spark", "4.1.1-scala2.13-java17-python3-ubuntu")
        );
        assert_eq!(
            repository("localhost:5000/spark-connect-operator"),
            ("spark-connect-operator", "latest")
        );
        assert!(
            resolve("nginx:1.27", std::path::Path::new("/tmp"))
                .unwrap_err()
                .contains("not available")
        );
    }
}
