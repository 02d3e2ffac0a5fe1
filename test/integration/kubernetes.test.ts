/**
 * deploy/kubernetes checked against the real code (without a cluster): every
 * manifest against the OpenAPI schema of its kind, every knats container's
 * command line through the CLI's own validation, its probes, mounts, NATS
 * users and egress configuration (test/helpers/kubernetes-check.ts). A table
 * of deliberate mistakes proves each kind of check fires.
 * kubernetes-nats.test.ts runs the control-plane NATS for real.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { itCatches, type Mistake } from '../helpers/deploy-mistakes.js';
import { KUBERNETES_DIR, obj, Repo, text } from '../helpers/deploy-repo.js';
import { checkKubernetes } from '../helpers/kubernetes-check.js';

describe('deploy/kubernetes against the real CLI', () => {
  const repo = new Repo();

  it('validates every knats container and its probes, mounts, NATS users and egress configuration', () => {
    checkKubernetes(repo);
  });

  it('has NATS as a control-plane static pod, a kube-apiserver sidecar for gRPC over UDS and for HTTP CONNECT, and agents as a Deployment', () => {
    const { pods, egress, nats } = checkKubernetes(repo);
    assert.deepEqual(
      nats.map((n) => [n.pod.file, n.pod.workload.kind, n.template]),
      [[`${KUBERNETES_DIR}/control-plane/nats.yaml`, 'Pod', `${KUBERNETES_DIR}/control-plane/nats.conf`]],
    );
    const frontends = pods.flatMap((p) =>
      p.containers.flatMap((c) => (c.checked?.kind === 'frontend' ? [c.checked.config] : [])),
    );
    assert.ok(frontends.some((f) => f.mode === 'grpc' && f.udsName));
    assert.ok(frontends.some((f) => f.mode === 'http-connect' && f.serverPort > 0));
    assert.deepEqual(egress.map((e) => text(obj(e.selection.connection).proxyProtocol)).sort(), [
      'GRPC',
      'HTTPConnect',
    ]);
    assert.ok(
      pods.some((p) => /Deployment\//.test(p.where) && p.containers.some((c) => c.checked?.kind === 'agent')),
    );
  });
});

describe('deliberate mistakes are caught', () => {
  const mistakes: Mistake[] = [
    // caught by the Kubernetes OpenAPI schemas
    {
      what: 'a Kubernetes field of the wrong type',
      file: `${KUBERNETES_DIR}/control-plane/kube-apiserver.yaml`,
      from: 'hostNetwork: true',
      to: 'hostNetwork: "yes"',
      caught:
        /kube-apiserver\.yaml.*Pod\/kube-apiserver: Kubernetes schema: \/spec\/hostNetwork must be boolean/,
    },
    {
      what: 'a Kubernetes container without a name',
      file: `${KUBERNETES_DIR}/control-plane/kube-apiserver-http-connect.yaml`,
      from: '    - name: knats-frontend\n      image:',
      to: '    - image:',
      caught: /Kubernetes schema: \/spec\/initContainers\/0 must have required property name/,
    },
    {
      what: 'a Kubernetes kind no schema knows',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: 'kind: PodDisruptionBudget',
      to: 'kind: PodDisruptionBudgets',
      caught: /no Kubernetes schema for apiVersion policy\/v1 kind PodDisruptionBudgets/,
    },
    // what no schema knows: our CLI, the files' references to each other, TLS
    {
      what: 'two Kubernetes agents sharing one seed',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: 'secretName: knats-agent-2-nkey',
      to: 'secretName: knats-agent-1-nkey',
      caught:
        /Deployment\/knats-agent-2 container agent: shares its NATS seed \(Secret knats-agent-1-nkey\) with/,
    },
    {
      what: 'two Kubernetes agents with one id',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '- --agent-id=agent-2',
      to: '- --agent-id=agent-1',
      caught: /Deployment\/knats-agent-2 container agent: agent id agent-1 is also used by/,
    },
    {
      what: 'a Kubernetes agent id run by two pods at once',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '  strategy:\n    type: Recreate',
      to: '  strategy:\n    type: RollingUpdate',
      first: true,
      caught: /Deployment\/knats-agent-1 container agent: may run agent id agent-1 in two pods at once/,
    },
    {
      what: 'a misspelled flag in a Kubernetes Deployment',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '- --nats-url=tls://nats.knats.example.internal',
      first: true,
      to: '- --nats-urls=tls://nats.knats.example.internal',
      caught: /agents\.yaml.*Deployment\/knats-agent-1 container agent.*--nats-urls: unknown flag/,
    },
    {
      what: 'a Kubernetes agent without NATS credentials',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '            - --nats-nkey=/etc/knats/agent.nk\n',
      first: true,
      to: '',
      caught: /container agent: connects to NATS without credentials/,
    },
    {
      what: 'a Kubernetes seed file outside the mounted Secret',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: 'mountPath: /etc/knats\n',
      first: true,
      to: 'mountPath: /etc/knats-nkey\n',
      caught: /--nats-nkey \/etc\/knats\/agent\.nk is not in a mounted volume/,
    },
    {
      what: 'a Kubernetes probe on the wrong port',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: 'containerPort: 8093',
      first: true,
      to: 'containerPort: 8094',
      caught: /probe on port health, but the health port is 8093/,
    },
    {
      what: 'a Kubernetes agent on plaintext NATS',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '- --nats-url=tls://nats.knats.example.internal',
      first: true,
      to: '- --nats-url=nats://nats.knats.example.internal',
      caught: /container agent: NATS URL nats:\/\/nats\.knats\.example\.internal:4222 is not tls:\/\//,
    },
    {
      what: 'a Kubernetes agent reaching NATS by a cluster Service name',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '- --nats-url=tls://nats.knats.example.internal:4222',
      first: true,
      to: '- --nats-url=tls://nats.knats-system.svc.cluster.local:4222',
      caught:
        /knats-agent-1 container agent: NATS URL .*: agents dial out to the control plane's NATS by its external name/,
    },
    {
      what: 'a Kubernetes agent reaching NATS by a pinned address',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '- --nats-url=tls://nats.knats.example.internal:4222',
      first: true,
      to: '- --nats-url=tls://10.96.0.42:4222',
      caught:
        /NATS URL tls:\/\/10\.96\.0\.42:4222: agents dial out to the control plane's NATS by its external name/,
    },
    {
      what: 'Kubernetes agents reaching NATS by two names',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '- --nats-url=tls://nats.knats.example.internal:4222',
      first: true,
      to: '- --nats-url=tls://nats-a.knats.example.internal:4222',
      caught:
        /agents reach NATS by several names: nats-a\.knats\.example\.internal, nats\.knats\.example\.internal/,
    },
    {
      what: 'a Kubernetes agent verifying NATS with a CA from elsewhere',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '            secretName: nats-ca\n',
      first: true,
      to: '            secretName: other-ca\n',
      caught: /agents verify NATS with different CA Secrets: other-ca, nats-ca/,
    },
    {
      what: 'a pinned clusterIP',
      file: `${KUBERNETES_DIR}/agents.yaml`,
      from: '---\napiVersion: policy/v1\n',
      to: '---\napiVersion: v1\nkind: Service\nmetadata:\n  name: nats\n  namespace: knats-system\nspec:\n  clusterIP: 10.96.0.42\n  ports:\n    - port: 4222\n---\napiVersion: policy/v1\n',
      caught: /Service\/nats: pins clusterIP 10\.96\.0\.42/,
    },
    {
      what: 'a control-plane sidecar that does not verify NATS',
      file: `${KUBERNETES_DIR}/control-plane/kube-apiserver.yaml`,
      from: '        - --nats-tls-ca=/etc/kubernetes/knats/nats-tls/ca.crt\n',
      to: '',
      caught: /kube-apiserver\.yaml.*container knats-frontend: connects to NATS without --nats-tls-ca/,
    },
    {
      what: 'a control-plane sidecar verifying NATS with another CA',
      file: `${KUBERNETES_DIR}/control-plane/kube-apiserver-http-connect.yaml`,
      from: '- --nats-tls-ca=/etc/kubernetes/knats/nats-tls/ca.crt',
      to: '- --nats-tls-ca=/etc/kubernetes/pki/knats/ca.crt',
      caught:
        /container knats-frontend: --nats-tls-ca \/etc\/kubernetes\/pki\/knats\/ca\.crt is not the CA file of the NATS servers \(host:\/etc\/kubernetes\/knats\/nats-tls\/ca\.crt\)/,
    },
    {
      what: 'a control-plane sidecar reaching NATS through the load balancer',
      file: `${KUBERNETES_DIR}/control-plane/kube-apiserver.yaml`,
      from: '- --nats-url=tls://127.0.0.1:4222',
      to: '- --nats-url=tls://nats.knats.example.internal:4222',
      caught: /the sidecar reaches the NATS server of its own node, tls:\/\/127\.0\.0\.1:4222/,
    },
    {
      what: 'control-plane NATS without client TLS',
      file: `${KUBERNETES_DIR}/control-plane/nats.conf`,
      from: '\ntls {\n',
      to: '\nno_tls {\n',
      caught: /control-plane\/nats\.conf: no tls block: clients would talk to NATS in plaintext/,
    },
    {
      what: 'control-plane NATS routes without TLS',
      file: `${KUBERNETES_DIR}/control-plane/nats.conf`,
      from: '  tls {\n    cert_file',
      to: '  no_tls {\n    cert_file',
      caught: /control-plane\/nats\.conf: no tls block in cluster: routes in plaintext/,
    },
    {
      what: 'control-plane NATS without the accounts of knats broker config',
      file: `${KUBERNETES_DIR}/control-plane/nats.conf`,
      from: 'include knats-accounts.conf\n',
      to: '',
      caught: /nats\.conf: does not include knats-accounts\.conf/,
    },
    {
      what: 'control-plane NATS with JetStream',
      file: `${KUBERNETES_DIR}/control-plane/nats.conf`,
      from: '\ninclude knats-accounts.conf',
      to: '\njetstream {}\ninclude knats-accounts.conf',
      caught: /nats\.conf: turns JetStream on/,
    },
    {
      what: 'control-plane NATS on another client port than its clients',
      file: `${KUBERNETES_DIR}/control-plane/nats.conf`,
      from: 'listen: 0.0.0.0:4222',
      to: 'listen: 0.0.0.0:4223',
      caught: /NATS URL tls:\/\/127\.0\.0\.1:4222: expected the NATS servers' client port 4223/,
    },
    {
      what: 'control-plane NATS off the host network',
      file: `${KUBERNETES_DIR}/control-plane/nats.yaml`,
      from: 'hostNetwork: true',
      to: 'hostNetwork: false',
      caught: /Pod\/knats-nats container nats: not on the host network/,
    },
    {
      what: 'control-plane NATS on an image that is not a release',
      file: `${KUBERNETES_DIR}/control-plane/nats.yaml`,
      from: 'image: nats:2.10.16-alpine',
      to: 'image: nats:latest',
      caught: /image nats:latest is not pinned to a NATS release/,
    },
    {
      what: 'control-plane NATS with its configuration outside its volumes',
      file: `${KUBERNETES_DIR}/control-plane/nats.yaml`,
      from: 'mountPath: /etc/kubernetes/knats\n',
      to: 'mountPath: /etc/nats\n',
      caught: /--config \/etc\/kubernetes\/knats\/nats\.conf is not in a mounted volume/,
    },
    {
      what: 'an egress configuration pointing at another socket',
      file: `${KUBERNETES_DIR}/control-plane/egress-selector-configuration.yaml`,
      from: 'udsName: /etc/kubernetes/konnectivity-server/konnectivity-server.socket',
      to: 'udsName: /etc/kubernetes/konnectivity-server/konnectivity.socket',
      caught: /egress-selector-configuration\.yaml.*cluster egress \(GRPC\) matches no knats sidecar/,
    },
    {
      what: 'an HTTP CONNECT egress configuration on another port',
      file: `${KUBERNETES_DIR}/control-plane/egress-selector-configuration-http-connect.yaml`,
      from: 'url: https://127.0.0.1:8131',
      to: 'url: https://127.0.0.1:8132',
      caught: /cluster egress \(HTTPConnect\) matches no knats sidecar/,
    },
  ];
  itCatches(mistakes);
});
