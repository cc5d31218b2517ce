// A real OpenID Connect provider (panva's oidc-provider) for the portal's
// integration tests. TEST-ONLY: it accepts any login name and has a control
// API that breaks its own ID tokens on purpose.
//
//   OIDC_CONFIG='{"client_id":"...","client_secret":"...","redirect_uris":["..."]}' node provider.mjs
//
// It listens on a random loopback port and prints exactly one line to stdout
// once ready: `listening http://127.0.0.1:PORT` (that URL is the issuer). It
// exits on SIGTERM/SIGINT and when its stdin closes, so a test process that
// dies (and with it the pipe) does not leave it behind.
//
// Control API on the same port (only for tests):
//   GET  /__test/health                     -> 200
//   POST /__test/accounts {"sub": ..., "email": ..., "email_verified": ...,
//                          "name": ..., "groups": [...], "is_admin": ...}
//   POST /__test/mode     {"mode": "normal" | "tamper_signature" | "wrong_audience"
//                                  | "expired" | "wrong_nonce" | "wrong_issuer"
//                                  | "http_token_endpoint" | "huge_discovery"
//                                  | "huge_token" | "token_error"}
//        The ID token modes rewrite the id_token of every later token
//        endpoint response; the others damage other answers as a hostile
//        provider would: the discovery document names a plain-http token
//        endpoint on a private address, or carries 10 MiB; the token answer
//        carries 10 MiB, or is an error whose description holds internal
//        details (PROVIDER-INTERNAL-DETAIL 10.9.8.7:5432). Until the mode
//        changes again.
//
// Must run on Node.js 18.19 (Debian 12) as well as 20.

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';

import Provider from 'oidc-provider';
import {
  CompactSign, calculateJwkThumbprint, decodeProtectedHeader, exportJWK, generateKeyPair,
} from 'jose';

const MODES = new Set([
  'normal', 'tamper_signature', 'wrong_audience', 'expired', 'wrong_nonce', 'wrong_issuer',
  'http_token_endpoint', 'huge_discovery', 'huge_token', 'token_error',
]);
const HUGE = 10 * 1024 * 1024;
const TEST_PREFIX = '/__test/';
const MAX_BODY = 64 * 1024;

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

let config;
try {
  config = JSON.parse(process.env.OIDC_CONFIG || '');
} catch (err) {
  fail(`OIDC_CONFIG must hold a JSON object: ${err.message}`);
}
if (!config || typeof config.client_id !== 'string' || typeof config.client_secret !== 'string'
  || !Array.isArray(config.redirect_uris) || config.redirect_uris.length === 0) {
  fail('OIDC_CONFIG needs "client_id", "client_secret" and a non-empty "redirect_uris" array');
}

// Exit cleanly when told to, and when the parent goes away.
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

// ---- signing key -----------------------------------------------------------

const { privateKey } = await generateKeyPair('RS256', { modulusLength: 2048, extractable: true });
const privateJwk = await exportJWK(privateKey);
privateJwk.kid = await calculateJwkThumbprint(privateJwk);
privateJwk.alg = 'RS256';
privateJwk.use = 'sig';

// ---- accounts ---------------------------------------------------------------

const accounts = new Map();

function claimsOf(id) {
  return accounts.get(id) || {
    sub: id,
    email: `${id}@example.test`,
    email_verified: true,
    name: id,
    groups: [],
  };
}

// ---- the ID token rewriting ------------------------------------------------

let mode = 'normal';

function decodePart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

async function resign(jwt, change) {
  const header = decodeProtectedHeader(jwt); // the same alg, kid and typ as the original
  const payload = decodePart(jwt.split('.')[1]);
  change(payload);
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(privateKey);
}

async function rewriteIdToken(idToken, current) {
  const now = Math.floor(Date.now() / 1000);
  switch (current) {
    case 'tamper_signature': {
      const [header, payload, signature] = idToken.split('.');
      const bytes = Buffer.from(signature, 'base64url');
      // Flip whole bytes (not the padding bits of the last character), so the
      // signature can never verify.
      bytes[0] ^= 0xff;
      bytes[bytes.length >> 1] ^= 0xff;
      return `${header}.${payload}.${bytes.toString('base64url')}`;
    }
    case 'wrong_audience':
      return resign(idToken, (p) => { p.aud = 'someone-else'; delete p.azp; });
    case 'expired':
      return resign(idToken, (p) => { p.iat = now - 7200; p.exp = now - 3600; });
    case 'wrong_nonce':
      return resign(idToken, (p) => { p.nonce = 'not-the-nonce'; });
    case 'wrong_issuer':
      return resign(idToken, (p) => { p.iss = 'http://127.0.0.1:1/other'; });
    default:
      return idToken;
  }
}

// ---- the control API -------------------------------------------------------

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error('body too large');
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null');
}

function reply(ctx, status, body) {
  ctx.status = status;
  ctx.body = body; // koa serialises objects and sets Content-Type/Length
}

async function controlApi(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  if (route === 'GET /__test/health') {
    reply(ctx, 200, { ok: true, mode });
    return;
  }
  if (route !== 'POST /__test/accounts' && route !== 'POST /__test/mode') {
    reply(ctx, 404, { error: `no test route ${route}` });
    return;
  }
  let body;
  try {
    body = await readJson(ctx.req);
  } catch (err) {
    reply(ctx, 400, { error: `bad JSON body: ${err.message}` });
    return;
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) {
    reply(ctx, 400, { error: 'expected a JSON object' });
    return;
  }
  if (route === 'POST /__test/mode') {
    if (!MODES.has(body.mode)) {
      reply(ctx, 400, { error: `unknown mode ${JSON.stringify(body.mode)}`, modes: [...MODES] });
      return;
    }
    mode = body.mode;
    reply(ctx, 200, { ok: true, mode });
    return;
  }
  if (typeof body.sub !== 'string' || body.sub === '') {
    reply(ctx, 400, { error: '"sub" must be a non-empty string' });
    return;
  }
  const claims = { ...body };
  if (claims.groups === undefined) claims.groups = [];
  accounts.set(body.sub, claims);
  reply(ctx, 200, { ok: true, account: claims });
}

// ---- the provider ----------------------------------------------------------

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    // client_secret_post is accepted too: oidc-provider takes either secret
    // method from a client registered with one of them.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [privateJwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  pkce: { methods: ['S256'], required: () => true },
  responseTypes: ['code'],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    // Nested role claims come with the default scopes, as Keycloak's
    // realm_access (its default "roles" scope) and Zitadel's roles (with
    // "assert roles on authentication") do.
    profile: ['name', 'realm_access', 'urn:zitadel:iam:org:project:roles'],
    groups: ['groups', 'is_admin'],
  },
  // conformIdTokenClaims stays at its default (true): with an access token
  // issued, scope-requested claims are served by userinfo only.
  features: {
    devInteractions: { enabled: true },
    userinfo: { enabled: true },
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { ...claimsOf(id), sub: id };
      },
    };
  },
});

const tokenPath = provider.pathFor('token');

// provider.use puts this in front of oidc-provider's own middleware, so it sees
// every request first and every response last.
provider.use(async (ctx, next) => {
  if (ctx.path.startsWith(TEST_PREFIX)) {
    await controlApi(ctx);
    return;
  }
  await next();
  const current = mode;
  if (current === 'normal') return;
  if (ctx.method === 'GET' && ctx.path.endsWith('/.well-known/openid-configuration')
    && (current === 'http_token_endpoint' || current === 'huge_discovery')) {
    const status = ctx.status;
    const document = typeof ctx.body === 'string' ? JSON.parse(ctx.body) : { ...ctx.body };
    if (current === 'http_token_endpoint') {
      document.token_endpoint = 'http://10.9.8.7:5432/token';
    } else {
      document.padding = 'x'.repeat(HUGE);
    }
    ctx.body = document;
    ctx.status = status;
    return;
  }
  if (ctx.method !== 'POST' || !ctx.path.endsWith(tokenPath)) return;
  if (current === 'token_error') {
    ctx.body = {
      error: 'invalid_grant',
      error_description: 'PROVIDER-INTERNAL-DETAIL 10.9.8.7:5432 refused',
    };
    ctx.status = 400;
    return;
  }
  if (current === 'huge_token') {
    const status = ctx.status;
    ctx.body = { ...ctx.body, padding: 'x'.repeat(HUGE) };
    ctx.status = status;
    return;
  }
  const { body } = ctx;
  if (!body || typeof body !== 'object' || Buffer.isBuffer(body) || typeof body.id_token !== 'string') {
    return;
  }
  const idToken = await rewriteIdToken(body.id_token, current);
  // A fresh object: koa recomputes Content-Length when the body is assigned.
  const status = ctx.status;
  ctx.body = { ...body, id_token: idToken };
  ctx.status = status;
});

server.on('request', provider.callback());
process.stdout.write(`listening ${issuer}\n`);
