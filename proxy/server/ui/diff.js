// Word diff of the draft (the answer without preferences) against the served answer: the
// longest common subsequence of words, after the common prefix and suffix are set aside.

const MAX_CELLS = 4_000_000; // beyond this (about 2,000 × 2,000 words) the texts are shown whole

// A word with the whitespace after it (leading whitespace is a token of its own).
export function tokens(text) {
  return text.match(/^\s+|\S+\s*/g) || [];
}

export function wordDiff(before, after) {
  const a = tokens(before);
  const b = tokens(after);
  let prefix = 0;
  while (prefix < a.length && prefix < b.length && a[prefix] === b[prefix]) prefix++;
  let suffix = 0;
  while (suffix < a.length - prefix && suffix < b.length - prefix && a[a.length - 1 - suffix] === b[b.length - 1 - suffix]) suffix++;
  const middleA = a.slice(prefix, a.length - suffix);
  const middleB = b.slice(prefix, b.length - suffix);
  const steps = [["same", a.slice(0, prefix)]];
  if ((middleA.length + 1) * (middleB.length + 1) > MAX_CELLS) {
    steps.push(["del", middleA], ["ins", middleB]);
  } else {
    for (const [op, token] of lcsDiff(middleA, middleB)) steps.push([op, [token]]);
  }
  steps.push(["same", a.slice(a.length - suffix)]);
  return blocks(steps);
}

// Joins the steps into parts; within each stretch of changes, every deleted word goes into one
// "del" part followed by one "ins" part, so a rewritten passage reads as one replaced block.
function blocks(steps) {
  const parts = [];
  let removed = [];
  let added = [];
  const flush = () => {
    if (removed.length) parts.push({ op: "del", text: removed.join("") });
    if (added.length) parts.push({ op: "ins", text: added.join("") });
    removed = [];
    added = [];
  };
  for (const [op, words] of steps) {
    if (!words.length) continue;
    if (op === "del") removed.push(...words);
    else if (op === "ins") added.push(...words);
    else {
      flush();
      const last = parts[parts.length - 1];
      if (last && last.op === "same") last.text += words.join("");
      else parts.push({ op: "same", text: words.join("") });
    }
  }
  flush();
  return parts;
}

function lcsDiff(a, b) {
  const n = a.length;
  const m = b.length;
  const width = m + 1;
  const table = new Uint32Array((n + 1) * width); // table[i][j]: LCS length of a[i:] and b[j:]
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      table[i * width + j] = a[i] === b[j] ? table[(i + 1) * width + j + 1] + 1 : Math.max(table[(i + 1) * width + j], table[i * width + j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      out.push(["same", a[i]]);
      i++;
      j++;
    } else if (table[(i + 1) * width + j] >= table[i * width + j + 1]) {
      out.push(["del", a[i++]]);
    } else {
      out.push(["ins", b[j++]]);
    }
  }
  while (i < n) out.push(["del", a[i++]]);
  while (j < m) out.push(["ins", b[j++]]);
  return out;
}

export function changedShare(parts) {
  const total = parts.reduce((sum, part) => sum + (part.op === "del" ? 0 : part.text.length), 0);
  const inserted = parts.reduce((sum, part) => sum + (part.op === "ins" ? part.text.length : 0), 0);
  return total ? inserted / total : 0;
}
