//! A pod's first process: started by the agent in new network, UTS and mount namespaces, it
//! waits for its veth, configures the pod network, builds the pod's root file system from
//! mounts (host directories read-only, the image layout, the pod's volumes), enters it and
//! execs the container's command.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use sco_e2e::net::{GATEWAY, GATEWAY_MAC};
use sco_e2e::run;

/// One mount of the pod's root, applied in order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Mount {
    /// A fresh tmpfs.
    Tmpfs { target: String },
    /// A bind of a host file or directory.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
        recursive: bool,
    },
    /// A symbolic link.
    Symlink { link: String, to: String },
}

/// Everything the sandbox needs, written by the agent as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Pod IP (a /32: every packet goes through the node, see [`crate::agent`]).
    pub ip: String,
    /// Hostname (the pod name).
    pub hostname: String,
    /// Directory that becomes the pod's root.
    pub root: PathBuf,
    /// Mounts, in order.
    pub mounts: Vec<Mount>,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the pod.
    pub workdir: String,
}

fn inside(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

fn apply(root: &Path, mount: &Mount) -> anyhow::Result<()> {
    match mount {
        Mount::Tmpfs { target } => {
            let path = inside(root, target);
            std::fs::create_dir_all(&path).with_context(|| format!("creating {target}"))?;
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    "mode=1777",
                    "tmpfs",
                    &path.to_string_lossy(),
                ],
            )
        }
        Mount::Bind {
            source,
            target,
            read_only,
            recursive,
        } => {
            let path = inside(root, target);
            if source.is_dir() {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("creating mount point {target}"))?;
            } else if !path.exists() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating the directory of {target}"))?;
                }
                std::fs::write(&path, b"")
                    .with_context(|| format!("creating mount point {target}"))?;
            }
            let mut args = vec![if *recursive { "--rbind" } else { "--bind" }];
            if *read_only {
                args.extend(["-o", "ro"]);
            }
            let (source, path) = (source.to_string_lossy(), path.to_string_lossy());
            args.extend([source.as_ref(), path.as_ref()]);
            run("mount", &args)
        }
        Mount::Symlink { link, to } => std::os::unix::fs::symlink(to, inside(root, link))
            .with_context(|| format!("linking {link}")),
    }
}

/// Runs the sandbox; returns only on error (on success the process becomes the container).
pub fn run_sandbox(spec_path: &Path) -> anyhow::Result<()> {
    let spec: SandboxSpec = serde_json::from_slice(&std::fs::read(spec_path)?)?;
    // Wait for the agent: it moves our end of the veth in, then writes one byte.
    let mut go = [0u8; 1];
    std::io::stdin()
        .read_exact(&mut go)
        .context("waiting for the agent")?;

    run("ip", &["link", "set", "lo", "up"])?;
    // A /32 with the node as the only neighbour, entered permanently: pod-to-pod traffic is
    // routed by the node, and no pod holds an ARP entry per peer. The kernel's neighbour table
    // is shared by all network namespaces and capped (gc_thresh3, 1024 by default) for entries
    // that are not permanent, which ~500 pods exhausted.
    run(
        "ip",
        &["addr", "add", &format!("{}/32", spec.ip), "dev", "eth0"],
    )?;
    run("ip", &["link", "set", "eth0", "up"])?;
    run(
        "ip",
        &["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
    )?;
    run(
        "ip",
        &["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
    )?;
    run(
        "ip",
        &[
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            GATEWAY_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    let hostname = std::ffi::CString::new(spec.hostname.clone())?;
    if unsafe { libc::sethostname(hostname.as_ptr(), spec.hostname.len()) } != 0 {
        bail!("sethostname: {}", std::io::Error::last_os_error());
    }

    run("mount", &["--make-rprivate", "/"])?;
    std::fs::create_dir_all(&spec.root)?;
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "mode=0755",
            "podroot",
            &spec.root.to_string_lossy(),
        ],
    )?;
    for mount in &spec.mounts {
        apply(&spec.root, mount)?;
    }
    std::os::unix::fs::chroot(&spec.root).context("chroot")?;
    std::env::set_current_dir(&spec.workdir)
        .with_context(|| format!("workingDir {}", spec.workdir))?;
    let devnull = std::fs::File::open("/dev/null")?;
    unsafe {
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&devnull), 0);
    }
    let (program, args) = spec
        .argv
        .split_first()
        .context("the container has no command")?;
    let err = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(spec.env.iter().cloned())
        .exec();
    bail!("exec {program}: {err}")
}
