//! The container image, built and run here: `deploy/image/build` puts the binary this test suite
//! built into the image `deploy/Dockerfile` describes (with buildah, from what this host has), then
//! the gateway runs inside it, as the image's own user, under buildah's chroot isolation on the
//! host's network, while real clients outside use it: `mosquitto_pub` and `mosquitto_sub` over MQTT,
//! the `courier` CLI over gRPC. Needs root, buildah and cargo-cyclonedx (`scripts/test` installs
//! them); buildah's storage is a temporary directory of this test's own.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{scrape::get, *};
use nix::{sys::signal::Signal, unistd::Pid};

/// The image's user and group (distroless's `nonroot`).
const NONROOT: u32 = 65532;
const TAG: &str = "localhost/courier:test";

#[test]
fn the_image_builds_and_serves_every_protocol_as_a_non_root_user() -> TestResult {
    let dir = tempfile::tempdir()?;
    let buildah = Buildah {
        storage: dir.path().join("storage"),
    };
    let out = dir.path().join("out");

    let started = Instant::now();
    let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/image/build"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_courier"))
        .arg("--out")
        .arg(&out)
        .arg("--storage")
        .arg(&buildah.storage)
        .args(["--tag", TAG])
        .output()?;
    let report = String::from_utf8_lossy(&built.stdout).into_owned();
    assert!(
        built.status.success(),
        "deploy/image/build failed:\n{report}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The size, for BENCHMARKS.md (this is the test build's binary, larger than a release one).
    println!(
        "built in {:.1} s:\n{report}",
        started.elapsed().as_secs_f64()
    );

    // What a container engine reads: the user, what runs, the OCI labels.
    let inspected: serde_json::Value =
        serde_json::from_str(&buildah.run(&["inspect", "--type", "image", TAG])?)?;
    let config = &inspected["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    let entrypoint = strings(&config["Entrypoint"])?;
    let cmd = strings(&config["Cmd"])?;
    assert_eq!(entrypoint, ["/usr/local/bin/courier"]);
    assert_eq!(cmd, ["serve", "--config", "/etc/courier/courier.toml"]);
    let label = |key: &str| config["Labels"][format!("org.opencontainers.image.{key}")].clone();
    assert_eq!(label("version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(label("licenses"), env!("CARGO_PKG_LICENSE"));
    assert_eq!(label("source"), env!("CARGO_PKG_REPOSITORY"));
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()?;
    assert_eq!(label("revision"), String::from_utf8(head.stdout)?.trim());
    for key in ["version", "licenses", "source", "revision"] {
        let annotation = &inspected["ImageAnnotations"][format!("org.opencontainers.image.{key}")];
        assert_eq!(*annotation, label(key), "annotation {key}");
    }

    // The OCI archive and the SBOM beside it: every crate in Cargo.lock that the binary is built
    // from, with its version and licence.
    let version = env!("CARGO_PKG_VERSION");
    let archive = out.join(format!("courier-{version}.oci.tar"));
    let listing = Command::new("tar").arg("-tf").arg(&archive).output()?;
    let listing = String::from_utf8(listing.stdout)?;
    assert!(
        listing.lines().any(|l| l == "index.json") && listing.contains("oci-layout"),
        "{} is no OCI archive:\n{listing}",
        archive.display()
    );
    let sbom_text = std::fs::read_to_string(out.join(format!("courier-{version}.cdx.json")))?;
    let sbom: serde_json::Value = serde_json::from_str(&sbom_text)?;
    check_sbom(&sbom)?;

    // The image's files, read from its root on the host.
    let container = Container::from(&buildah, "courier-image-test")?;
    let root = PathBuf::from(buildah.run(&["mount", &container.name])?.trim());
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    assert!(
        passwd.contains("nonroot:x:65532:65532:"),
        "/etc/passwd:\n{passwd}"
    );
    assert!(std::fs::read_to_string(root.join("etc/group"))?.contains("nonroot:x:65532:"));
    let certificates = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt"))?;
    assert!(certificates.matches("BEGIN CERTIFICATE").count() > 10);
    let data = std::fs::metadata(root.join("var/lib/courier"))?;
    assert_eq!((data.uid(), data.gid()), (NONROOT, NONROOT));
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/doc/courier/sbom.cdx.json"))?,
        sbom_text
    );
    let binary = std::fs::metadata(root.join("usr/local/bin/courier"))?;
    assert_eq!(binary.uid(), 0, "the binary is not the user's to change");

    // The default config loads with the gateway's own loader, inside the image.
    let checked: serde_json::Value = serde_json::from_str(&buildah.run(&[
        "run",
        "--isolation",
        "chroot",
        &container.name,
        "--",
        "/usr/local/bin/courier",
        "config",
        "check",
        "--config",
        "/etc/courier/courier.toml",
        "--format",
        "json",
    ])?)?;
    assert_eq!(checked["log"], "embedded:/var/lib/courier", "{checked}");
    for (name, port) in [
        ("grpc", 50051),
        ("mqtt", 1883),
        ("amqp", 5672),
        ("http", 8080),
    ] {
        assert_eq!(
            checked["listeners"][name],
            format!("0.0.0.0:{port}"),
            "{checked}"
        );
    }

    // What a container engine runs (entrypoint and cmd), on free loopback ports of the host.
    let mut command = vec!["run", "--isolation", "chroot", "--network", "host"];
    command.extend([container.name.as_str(), "--"]);
    command.extend(entrypoint.iter().chain(&cmd).map(String::as_str));
    command.extend([
        "--grpc-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
        "--amqp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let mut served = Served::start(&buildah, &command)?;
    let ready = served.ready_line()?;
    let address = |name: &str| -> Result<SocketAddr, BoxError> {
        let field = ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix(&format!("{name}=")))
            .ok_or_else(|| format!("no {name} in {ready:?}"))?;
        Ok(field.parse()?)
    };
    assert!(ready.contains("log=embedded:/var/lib/courier"), "{ready}");

    // The process inside runs as the image's user, not as root.
    let pid = served.courier_pid()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uids: Vec<&str> = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .ok_or("no Uid line")?
        .split_whitespace()
        .collect();
    assert_eq!(
        uids, ["65532"; 4],
        "the gateway's uids (real, effective, saved, fs)"
    );

    let http = address("http")?;
    let deadline = Instant::now() + DEADLINE;
    while get(http, "/readyz")?.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        std::thread::sleep(Duration::from_millis(100));
    }

    // MQTT: a retained message, then a live one, through the gateway in the image.
    let mqtt = address("mqtt")?;
    let port = mqtt.port().to_string();
    let topic = unique("image");
    let publish = |message: &str, retain: bool| {
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", &topic, "-q", "1"];
        args.extend(["-m", message]);
        if retain {
            args.push("-r");
        }
        mosquitto("mosquitto_pub", &args, "")
    };
    publish("retained-1", true)?;
    let mut subscriber = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", &topic, "-q", "1"])
        .args(["-C", "2", "-W", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("mosquitto_sub (apt-get install mosquitto-clients): {e}"))?;
    let received = lines_of(subscriber.stdout.take().ok_or("no stdout")?);
    let first = received.recv_timeout(DEADLINE)?;
    assert_eq!(first, "retained-1");
    // The retained message came, so the subscription is in place.
    publish("live-2", false)?;
    assert_eq!(received.recv_timeout(DEADLINE)?, "live-2");
    assert!(subscriber.wait()?.success());

    // gRPC: the courier CLI produces and consumes in a group.
    let server = format!("http://{}", address("grpc")?);
    let grpc_topic = unique("image-grpc");
    let cli = |args: &[&str]| -> Result<String, BoxError> {
        let output = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(args)
            .args(["--server", &server])
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "courier {args:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(output.stdout)?)
    };
    cli(&["produce", &grpc_topic, "one", "two", "three"])?;
    let consumed = cli(&[
        "consume",
        &grpc_topic,
        "--group",
        "image",
        "--count",
        "3",
        "--idle-timeout",
        "20s",
    ])?;
    assert_eq!(
        consumed.lines().collect::<Vec<_>>(),
        ["one", "two", "three"]
    );

    // What the gateway stored is where the config says, written by the image's user.
    let stored: Vec<_> = std::fs::read_dir(root.join("var/lib/courier"))?.collect();
    assert!(!stored.is_empty(), "nothing in /var/lib/courier");

    // SIGTERM, as a container engine stops it: the drain ends with a clean exit.
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM)?;
    let exit = served.wait()?;
    assert!(exit.success(), "the gateway in the image exited {exit}");
    Ok(())
}

/// The SBOM: CycloneDX describing courier, with the crates of Cargo.lock it is built from, each
/// with its version (as locked) and a licence.
fn check_sbom(sbom: &serde_json::Value) -> TestResult {
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["metadata"]["component"]["name"], "courier");
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))?;
    let components = sbom["components"]
        .as_array()
        .ok_or("the SBOM lists no components")?;
    let crates: Vec<&serde_json::Value> = components
        .iter()
        .filter(|c| {
            c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:cargo/"))
        })
        .collect();
    assert!(crates.len() > 100, "only {} crates", crates.len());
    for component in &crates {
        let (name, version) = (&component["name"], &component["version"]);
        let locked = format!("name = {name}\nversion = {version}\n");
        assert!(
            lock.contains(&locked),
            "{name} {version} is not in Cargo.lock"
        );
        assert!(
            component["licenses"]
                .as_array()
                .is_some_and(|l| !l.is_empty()),
            "{name} has no licence"
        );
    }
    for wanted in ["tokio", "rdkafka-sys", "rustls", "openssl-src"] {
        assert!(
            crates.iter().any(|c| c["name"] == wanted),
            "{wanted} is not in the SBOM"
        );
    }
    Ok(())
}

fn strings(value: &serde_json::Value) -> Result<Vec<String>, BoxError> {
    Ok(serde_json::from_value(value.clone())?)
}

/// Each line a child writes, as it comes.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    received
}

/// buildah on this test's own storage.
struct Buildah {
    storage: PathBuf,
}

impl Buildah {
    fn command(&self) -> Command {
        let mut command = Command::new("buildah");
        command
            .args(["--storage-driver", "vfs", "--root"])
            .arg(self.storage.join("root"))
            .arg("--runroot")
            .arg(self.storage.join("run"));
        command
    }

    /// Runs `buildah <args>` to completion; its stdout.
    fn run(&self, args: &[&str]) -> Result<String, BoxError> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("buildah (apt-get install buildah): {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "buildah {args:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// A working container of the image, removed when dropped.
struct Container<'a> {
    buildah: &'a Buildah,
    name: String,
}

impl<'a> Container<'a> {
    fn from(buildah: &'a Buildah, name: &str) -> Result<Self, BoxError> {
        let name = buildah
            .run(&["from", "--name", name, TAG])?
            .trim()
            .to_owned();
        Ok(Self { buildah, name })
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.buildah.run(&["rm", &self.name]);
    }
}

/// `buildah run` serving the gateway; stopped (SIGKILL) if the test ends before it exits.
struct Served {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Served {
    fn start(buildah: &Buildah, args: &[&str]) -> Result<Self, BoxError> {
        let log = buildah.storage.join("courier.log");
        let mut child = buildah
            .command()
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let stdout = lines_of(child.stdout.take().ok_or("no stdout")?);
        Ok(Self {
            child: Some(child),
            stdout,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ready_line(&mut self) -> Result<String, BoxError> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .map_err(|_| format!("no ready line within {DEADLINE:?}; log:\n{}", self.log()))?;
            if line.starts_with("courier ready ") {
                return Ok(line);
            }
        }
    }

    /// The gateway's process: the `courier` among buildah's descendants.
    fn courier_pid(&self) -> Result<i32, BoxError> {
        let buildah = self.child.as_ref().ok_or("not running")?.id() as i32;
        let parents: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
                let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
                let parent = rest.split_whitespace().nth(1)?.parse().ok()?;
                Some((pid, parent, comm.to_owned()))
            })
            .collect();
        let descends = |mut pid: i32| {
            for _ in 0..64 {
                if pid == buildah {
                    return true;
                }
                match parents.iter().find(|(p, ..)| *p == pid) {
                    Some((_, parent, _)) if *parent > 1 => pid = *parent,
                    _ => return false,
                }
            }
            false
        };
        let found: Vec<i32> = parents
            .iter()
            .filter(|(pid, _, comm)| comm == "courier" && descends(*pid))
            .map(|(pid, ..)| *pid)
            .collect();
        match found.as_slice() {
            [pid] => Ok(*pid),
            other => Err(format!("courier processes under buildah {buildah}: {other:?}").into()),
        }
    }

    fn wait(&mut self) -> Result<std::process::ExitStatus, BoxError> {
        let child = self.child.as_mut().ok_or("not running")?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("the gateway did not exit; log:\n{}", self.log()).into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        // The gateway first: killing buildah alone could leave it running in its chroot.
        if let Ok(pid) = self.courier_pid() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
