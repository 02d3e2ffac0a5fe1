/**
 * A small POSIX shell reader: enough to find the knats and curl command lines
 * of a script and expand their variables. Unknown variables become a placeholder.
 */
import type { Env } from './deploy-repo.js';

/** What an unknown shell variable or a value from the cluster expands to. */
const PLACEHOLDER = 'placeholder';
/** Stands for an escaped `\$` inside double quotes until expansion is done. */
const ESCAPED_DOLLAR = '\uE000';

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

export function lexShell(src: string): Token[] {
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

export interface ShellCommand {
  readonly words: string[];
  /** `NAME=value cmd`: environment of that one command. */
  readonly env: Record<string, string>;
}

/** The simple commands of a script, in order, with variables expanded as far as they are known. */
export function shellCommands(src: string, env: Env, positional: readonly string[]): ShellCommand[] {
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
export function programOf(words: readonly string[]): { program: string; args: string[] } {
  let k = 0;
  while (['exec', 'env', 'nohup', 'command'].includes(words[k] ?? '')) k++;
  const word = words[k] ?? '';
  if (/(^|\/)node$/.test(word) && /(^|\/)dist\/cli\.js$/.test(words[k + 1] ?? ''))
    return { program: 'knats', args: words.slice(k + 2) };
  return { program: word.split('/').pop() ?? '', args: words.slice(k + 1) };
}
