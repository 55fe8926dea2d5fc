//! Nodes that run pods: on a two-node cluster whose nodes run mesh-node-agent, Kubernetes
//! itself schedules a Deployment's pods; each runs in a network namespace the node's CNI
//! configuration made (ptp + host-local), with its environment and volumes; probes gate
//! readiness; `kubectl exec` and `kubectl logs` go through the API server to the node; a
//! crashing container restarts with back-off; an unmapped image fails like a pull error;
//! deleting a pod runs CNI DEL. Probes (startup, readiness, liveness) drive conditions and
//! restarts, and containers get SIGTERM when they are stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_tests::apps::testapp_binary;
use mesh_tests::eventually::eventually;
use mesh_tests::kube_nodes::{Image, KubeCluster};

const WAIT: Duration = Duration::from_secs(90);

const WORKLOADS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
data:
  greeting: hello from a ConfigMap
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: shop
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: example.com/mesh-testapp:1
        args: [http-echo, --listen, "0.0.0.0:8080"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: web-config, key: greeting}}
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /, port: http}
          periodSeconds: 1
        volumeMounts:
        - {name: config, mountPath: /etc/web/config}
        - {name: secret, mountPath: /etc/web/secret, readOnly: true}
        - {name: scratch, mountPath: /var/web/scratch}
        - {name: node-dir, mountPath: /var/web/node}
      volumes:
      - name: config
        configMap: {name: web-config}
      - name: secret
        secret: {secretName: web-secret}
      - name: scratch
        emptyDir: {}
      - name: node-dir
        hostPath: {path: /run/web, type: DirectoryOrCreate}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

const CRASHING: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: crasher
  namespace: shop
spec:
  containers:
  - name: crasher
    image: example.com/shell:1
    command: [sh, -c, 'echo "run of $HOSTNAME"; exit 3']
---
apiVersion: v1
kind: Pod
metadata:
  name: unpullable
  namespace: shop
spec:
  containers:
  - name: main
    image: example.com/not-in-the-table:1
"#;

fn images() -> BTreeMap<String, Image> {
    let testapp = testapp_binary().expect("the mesh-testapp binary");
    BTreeMap::from([
        (
            "example.com/mesh-testapp:1".to_string(),
            Image {
                entrypoint: vec![testapp.display().to_string()],
                path: vec![],
            },
        ),
        (
            "example.com/shell:1".to_string(),
            Image {
                entrypoint: vec!["/bin/sh".into()],
                path: vec!["/bin".into(), "/usr/bin".into()],
            },
        ),
    ])
}

fn exec(kube: &KubeCluster, pod: &str, command: &[&str]) -> String {
    let mut args = vec!["exec", "-n", "shop", pod, "--"];
    args.extend(command);
    kube.kubectl(&args)
        .unwrap_or_else(|err| panic!("{err}\n{}", kube.agent_logs()))
}

#[test]
fn kubernetes_runs_pods_on_the_nodes() {
    let kube = KubeCluster::start(&["n1", "n2"], images()).expect("starting the cluster");
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(WORKLOADS))
        .unwrap();

    // The scheduler spreads the replicas; the agents run them and report them Ready once
    // the readiness probe answers.
    kube.wait_deployment_ready("shop", "web", 2, WAIT).unwrap();
    let listing = kube.jsonpath(&["get", "pods", "-n", "shop", "-l", "app=web"],
        r#"{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.hostIP}{"\n"}{end}"#,
    );
    let pods: Vec<Vec<String>> = listing
        .lines()
        .map(|line| line.split(' ').map(str::to_string).collect())
        .collect();
    assert_eq!(pods.len(), 2, "{listing}");
    let mut nodes: Vec<&str> = pods.iter().map(|pod| pod[1].as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2"], "one replica per node: {listing}");
    for pod in &pods {
        let node = kube.cluster().node(&pod[1]);
        let (network, _) = node.pod_cidr();
        let prefix = network.to_string();
        let prefix = prefix.rsplit_once('.').unwrap().0;
        assert!(
            pod[2].starts_with(prefix),
            "pod IP from the node's host-local range: {listing}"
        );
        assert_eq!(pod[3], node.underlay_ip().to_string(), "{listing}");
    }
    let (first, second) = (&pods[0], &pods[1]);

    // kubectl exec runs in the pod: its network namespace (eth0 holds the pod IP), its
    // environment (downward API, ConfigMap keys), its volumes.
    let addresses = exec(
        &kube,
        &first[0],
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    );
    assert!(addresses.contains(&format!("{}/", first[2])), "{addresses}");
    let environment = exec(
        &kube,
        &first[0],
        &[
            "sh",
            "-c",
            "echo $POD_NAME $POD_NAMESPACE $NODE_NAME $POD_IP; echo $GREETING",
        ],
    );
    assert_eq!(
        environment,
        format!(
            "{} shop {} {}\nhello from a ConfigMap\n",
            first[0], first[1], first[2]
        )
    );
    let files = exec(
        &kube,
        &first[0],
        &[
            "sh",
            "-c",
            "cat /etc/web/config/greeting; echo; cat /etc/web/secret/password; echo; \
             cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; \
             touch /var/web/scratch/x /var/web/node/y && echo writable",
        ],
    );
    assert_eq!(files, "hello from a ConfigMap\ns3cret\nshop\nwritable\n");
    // The hostPath volume is the node's own directory (its /run).
    assert!(
        kube.host_root(&first[1]).join("run/web/y").exists(),
        "hostPath is on the pod's node"
    );
    // The projected ServiceAccount token is a real one: the API server accepts it.
    let whoami = exec(
        &kube,
        &first[0],
        &[
            "sh",
            "-c",
            "curl -sS --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
             -H \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" \
             https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews \
             -X POST -H 'Content-Type: application/json' \
             -d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}'",
        ],
    );
    assert!(
        whoami.contains("system:serviceaccount:shop:default"),
        "{whoami}"
    );
    // Pod to pod across nodes, from inside the first pod.
    let reply = exec(
        &kube,
        &first[0],
        &["curl", "-sS", &format!("http://{}:8080/", second[2])],
    );
    assert!(reply.contains(&second[0]), "{reply}");
    // An exec's exit status reaches kubectl.
    let failed = kube
        .kubectl(&["exec", "-n", "shop", &first[0], "--", "sh", "-c", "exit 7"])
        .unwrap_err()
        .to_string();
    assert!(failed.contains("exit code 7"), "{failed}");

    // The real controllers see the ready pods.
    let endpoints = kube.jsonpath(
        &[
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=web",
        ],
        "{.items[*].endpoints[*].addresses[*]}",
    );
    for pod in &pods {
        assert!(endpoints.contains(&pod[2]), "{endpoints}");
    }

    // A crashing container restarts with back-off; its runs' output is in its logs.
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(CRASHING))
        .unwrap();
    eventually("the crasher to restart twice", WAIT, || {
        let restarts = kube.jsonpath(
            &["get", "pod", "crasher", "-n", "shop"],
            "{.status.containerStatuses[0].restartCount}",
        );
        match restarts.parse::<u32>() {
            Ok(count) if count >= 2 => Ok(()),
            _ => Err(format!("restartCount={restarts:?}")),
        }
    })
    .unwrap();
    let state = kube.jsonpath(
        &["get", "pod", "crasher", "-n", "shop"],
        "{.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(state, "3");
    eventually("the crasher to be in CrashLoopBackOff", WAIT, || {
        let reason = kube.jsonpath(
            &["get", "pod", "crasher", "-n", "shop"],
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        if reason == "CrashLoopBackOff" {
            Ok(())
        } else {
            Err(reason)
        }
    })
    .unwrap();
    let previous = kube
        .kubectl(&["logs", "-n", "shop", "crasher", "--previous"])
        .unwrap();
    assert_eq!(previous, "run of crasher\n");
    let table = kube
        .kubectl(&["get", "pod", "crasher", "-n", "shop"])
        .unwrap();
    assert!(
        table.lines().nth(1).is_some_and(|row| row
            .split_whitespace()
            .nth(3)
            .and_then(|restarts| restarts.parse::<u32>().ok())
            .is_some_and(|n| n >= 2)),
        "kubectl get pods shows the restarts:\n{table}"
    );

    // An image the nodes do not have fails like a pull error, saying why.
    eventually("the unpullable pod to report its image", WAIT, || {
        let waiting = kube.jsonpath(&["get", "pod", "unpullable", "-n", "shop"],
            "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}",
        );
        if (waiting.starts_with("ErrImagePull") || waiting.starts_with("ImagePullBackOff"))
            && waiting.contains("example.com/not-in-the-table:1")
        {
            Ok(())
        } else {
            Err(waiting)
        }
    })
    .unwrap();

    // Deleting a pod stops it (SIGTERM), runs CNI DEL (host-local frees its address) and
    // removes its network namespace; the object goes once the node is done.
    let own_namespace = |pod: &str| {
        kube.pod_namespaces()
            .unwrap()
            .into_iter()
            .filter(|name| name.contains(&format!("-k-{pod}-")))
            .count()
    };
    assert_eq!(own_namespace(&first[0]), 1);
    let lease = kube
        .host_root(&first[1])
        .join("var/lib/cni/networks/k8s-pod-network")
        .join(&first[2]);
    assert!(lease.exists(), "host-local leased {}", first[2]);
    kube.kubectl(&["delete", "pod", "-n", "shop", &first[0], "--wait=true"])
        .unwrap();
    assert!(!lease.exists(), "CNI DEL released {}", first[2]);
    assert_eq!(own_namespace(&first[0]), 0, "its network namespace is gone");
    // The ReplicaSet replaces it and it becomes ready again.
    kube.wait_deployment_ready("shop", "web", 2, WAIT).unwrap();
}

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: probed
  namespace: shop
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: main
    image: example.com/shell:1
    workingDir: /data
    command:
    - sh
    - -c
    - |
      echo x >> /data/runs
      trap 'echo "TERM in run $(wc -l < /data/runs)" >> /node/events; exit 0' TERM
      touch started
      mesh-testapp tcp-echo --listen 0.0.0.0:7000 &
      while :; do sleep 0.2; done
    startupProbe:
      exec: {command: [test, -f, /data/started]}
      periodSeconds: 1
    readinessProbe:
      exec: {command: [test, -f, /data/ready]}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: 7000}
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: node, mountPath: /node}
  volumes:
  - name: data
    emptyDir: {}
  - name: node
    hostPath: {path: /run/probed, type: DirectoryOrCreate}
"#;

/// Startup (exec), readiness (exec) and liveness (TCP) probes drive the container's
/// conditions and restarts; deleting the pod sends SIGTERM to its container.
#[test]
fn probes_set_conditions_and_restart_and_deletion_sends_sigterm() {
    let mut table = images();
    let testapp = testapp_binary().unwrap();
    table
        .get_mut("example.com/shell:1")
        .unwrap()
        .path
        .push(testapp.parent().unwrap().display().to_string());
    let kube = KubeCluster::start(&["n1"], table).expect("starting the cluster");
    kube.kubectl(&["create", "namespace", "shop"]).unwrap();
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(PROBED))
        .unwrap();
    let field = |path: &str| kube.jsonpath(&["get", "pod", "probed", "-n", "shop"], path);
    eventually("the startup probe to pass", WAIT, || {
        if field("{.status.containerStatuses[0].started}") == "true" {
            Ok(())
        } else {
            Err(kube.agent_logs())
        }
    })
    .unwrap();
    assert_eq!(
        field("{.status.containerStatuses[0].ready}"),
        "false",
        "not ready until /data/ready"
    );
    exec(&kube, "probed", &["touch", "/data/ready"]);
    eventually("the readiness probe to pass", WAIT, || {
        let ready = field("{.status.conditions[?(@.type=='Ready')].status}");
        if ready == "True" { Ok(()) } else { Err(ready) }
    })
    .unwrap();
    exec(&kube, "probed", &["rm", "/data/ready"]);
    eventually("the readiness probe to fail again", WAIT, || {
        let ready = field("{.status.conditions[?(@.type=='Ready')].status}");
        if ready == "False" { Ok(()) } else { Err(ready) }
    })
    .unwrap();
    // The liveness probe's port closes: the container is restarted (SIGTERM first).
    exec(&kube, "probed", &["pkill", "-x", "mesh-testapp"]);
    eventually("the liveness probe to restart the container", WAIT, || {
        let restarts = field("{.status.containerStatuses[0].restartCount}");
        if restarts == "1" {
            Ok(())
        } else {
            Err(restarts)
        }
    })
    .unwrap();
    let events = kube.host_root("n1").join("run/probed/events");
    assert_eq!(std::fs::read_to_string(&events).unwrap(), "TERM in run 1\n");
    eventually("the new run to be started", WAIT, || {
        if field("{.status.containerStatuses[0].started}") == "true" {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .unwrap();
    // Deleting the pod: SIGTERM to the container (which exits at once, well within its
    // 30 s grace period), then the object goes.
    kube.kubectl(&["delete", "pod", "probed", "-n", "shop", "--wait=true"])
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "TERM in run 1\nTERM in run 2\n"
    );
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    mesh_tests::kube_yaml::documents(text).expect("valid YAML")
}

/// The seed lecture's model-server Services and Pods, read from the fixture (checked
/// against the lecture when this checkout sits beside it).
fn seed_workloads() -> String {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("tests/fixtures/seed-lecture-model-server.yaml"))
        .expect("fixture");
    let lecture = repo.join("../shared/seed/lecture-04-advanced-networking-and-service-mesh.md");
    if let Ok(lecture) = std::fs::read_to_string(lecture) {
        let mut from_lecture = Vec::new();
        let mut rest = lecture.as_str();
        while let Some(start) = rest.find("```yaml\n") {
            let block = &rest[start + 8..];
            let end = block.find("```").expect("closed block");
            from_lecture.extend(documents(&block[..end]));
            rest = &block[end..];
        }
        for object in documents(&text) {
            assert!(
                from_lecture.contains(&object),
                "tests/fixtures/seed-lecture-model-server.yaml: no longer in the lecture: {object}"
            );
        }
    }
    text
}

#[test]
fn the_seed_lectures_model_server_runs() {
    let testapp = testapp_binary().expect("the mesh-testapp binary");
    let images = BTreeMap::from([(
        "model-server:v1".to_string(),
        Image {
            entrypoint: vec![
                testapp.display().to_string(),
                "http-echo".into(),
                "--listen".into(),
                "0.0.0.0:8080".into(),
            ],
            path: vec![],
        },
    )]);
    let kube = KubeCluster::start(&["n1"], images).expect("starting the cluster");
    kube.kubectl_with_input(&["apply", "-f", "-"], Some(&seed_workloads()))
        .unwrap();
    for pod in ["model-server", "low-latency-inference"] {
        eventually(format!("{pod} to be ready"), WAIT, || {
            let ready = kube.jsonpath(
                &["get", "pod", pod],
                "{.status.conditions[?(@.type=='Ready')].status}",
            );
            if ready == "True" {
                Ok(())
            } else {
                Err(format!("Ready={ready:?}\n{}", kube.agent_logs()))
            }
        })
        .unwrap();
    }
    let node = kube.cluster().node("n1");
    let pod_ip = kube.jsonpath(&["get", "pod", "model-server"], "{.status.podIP}");
    let host_ip = kube.jsonpath(&["get", "pod", "low-latency-inference"], "{.status.podIP}");
    assert_eq!(
        host_ip,
        node.underlay_ip().to_string(),
        "hostNetwork: the node's IP"
    );
    assert_ne!(pod_ip, host_ip);
    // Both answer on 8080: one in its own network namespace, one on the node's.
    for ip in [&pod_ip, &host_ip] {
        let out = node
            .exec(
                "curl",
                ["-sS", "--max-time", "5", &format!("http://{ip}:8080/")],
            )
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("\"pod\""), "{ip}: {body}");
    }
}
