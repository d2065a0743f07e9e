// Real Node clients of perg-proxy, one scenario per run, driven by tests/test_node_clients.py.
//
//   node clients.mjs <scenario>
//
// Environment: PERG_BASE_URL (the proxy's /v1 URL), PERG_API_KEY, PERG_MODEL, PERG_PROMPT, and
// optionally PERG_MAX_TOKENS, PERG_SCHEMA (the Output.object schema: "city", the default, or
// "verdict", an enum a small model cannot run past a token limit with), PERG_PREFERENCES (a JSON array of strings, sent as X-Perg-Preferences-B64: base64url
// of its UTF-8 JSON, the header that carries any Unicode) and PERG_USER (sent as X-Perg-User).
// Prints one JSON object on stdout: what the client library returned (text, parsed output, tool
// steps, stream event types) and the x-perg-* response headers it saw. A client error is printed as
// {"error": {...}} with exit code 1.

import { createOpenAI } from "@ai-sdk/openai";
import { generateText, Output, stepCountIs, streamText, tool } from "ai";
import OpenAI from "openai";
import { z } from "zod";

const env = process.env;
const baseURL = env.PERG_BASE_URL;
const apiKey = env.PERG_API_KEY;
const model = env.PERG_MODEL;
const prompt = env.PERG_PROMPT ?? "Say hello.";
const maxOutputTokens = env.PERG_MAX_TOKENS ? Number(env.PERG_MAX_TOKENS) : undefined;

function preferenceHeaders() {
  const headers = {};
  if (env.PERG_PREFERENCES) {
    const preferences = JSON.parse(env.PERG_PREFERENCES);
    // base64url, no padding (Node's "base64url" encoding), of the UTF-8 JSON array
    headers["X-Perg-Preferences-B64"] = Buffer.from(JSON.stringify(preferences), "utf8").toString("base64url");
  }
  if (env.PERG_USER) headers["X-Perg-User"] = env.PERG_USER;
  return headers;
}

function pergHeaders(headers) {
  const entries = headers instanceof Headers ? [...headers.entries()] : Object.entries(headers ?? {});
  return Object.fromEntries(entries.filter(([name]) => name.toLowerCase().startsWith("x-perg-")).map(([n, v]) => [n.toLowerCase(), v]));
}

const provider = createOpenAI({ baseURL, apiKey, headers: preferenceHeaders() });
const sdk = new OpenAI({ baseURL, apiKey, defaultHeaders: preferenceHeaders(), maxRetries: 0, timeout: 120_000 });

const City = z.object({ city: z.string(), country: z.string() });
const Verdict = z.object({ answer: z.enum(["yes", "no"]) });
const schema = env.PERG_SCHEMA === "verdict" ? Verdict : City;

const weather = tool({
  description: "The current weather in a city.",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => ({ city, forecast: "sunny", celsius: 21 }),
});

const scenarios = {
  // AI SDK, provider default: openai(model) is the Responses API.
  async "ai-generate"() {
    const result = await generateText({ model: provider(model), prompt, maxOutputTokens, maxRetries: 0 });
    return { text: result.text, finishReason: result.finishReason, usage: result.usage, headers: pergHeaders(result.response.headers) };
  },

  async "ai-stream"() {
    const result = streamText({ model: provider(model), prompt, maxOutputTokens, maxRetries: 0, onError: () => {} });
    const parts = [];
    const errors = [];
    let text = "";
    for await (const part of result.fullStream) {
      parts.push(part.type);
      if (part.type === "text-delta") text += part.text;
      if (part.type === "error") errors.push(String(part.error?.message ?? part.error));
    }
    const response = await result.response;
    return { text, parts, errors, finishReason: await result.finishReason, headers: pergHeaders(response.headers) };
  },

  // Output.object on the Responses API (text.format json_schema) and on chat completions
  // (response_format json_schema).
  async "ai-object"() {
    const result = await generateText({ model: provider(model), prompt, maxOutputTokens, maxRetries: 0, output: Output.object({ schema }) });
    return { output: result.output, text: result.text, headers: pergHeaders(result.response.headers) };
  },

  async "ai-chat-object"() {
    const result = await generateText({ model: provider.chat(model), prompt, maxOutputTokens, maxRetries: 0, output: Output.object({ schema }) });
    return { output: result.output, text: result.text, headers: pergHeaders(result.response.headers) };
  },

  // A tool loop: the model calls `weather`, the SDK runs it and sends the result back. On
  // chat completions (the AI SDK sends Responses follow-up turns as item_reference, which a
  // stateless proxy cannot resolve; see docs/api.md).
  async "ai-chat-tools"() {
    const result = await generateText({
      model: provider.chat(model),
      prompt,
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxOutputTokens,
      maxRetries: 0,
    });
    return {
      text: result.text,
      steps: result.steps.map((step) => ({ finishReason: step.finishReason, toolCalls: step.toolCalls.map((c) => c.toolName) })),
      headers: pergHeaders(result.response.headers),
    };
  },

  // The same loop on the Responses API (the provider's default). With `store` left as it is the
  // SDK sends its earlier output items back as item_reference (ids only the upstream can resolve);
  // PERG_STORE=false makes it send them whole.
  async "ai-tools"() {
    const providerOptions = env.PERG_STORE === "false" ? { openai: { store: false } } : undefined;
    const result = await generateText({
      model: provider(model),
      prompt,
      tools: { weather },
      stopWhen: stepCountIs(3),
      maxOutputTokens,
      maxRetries: 0,
      providerOptions,
    });
    return {
      text: result.text,
      steps: result.steps.map((step) => ({ finishReason: step.finishReason, toolCalls: step.toolCalls.map((c) => c.toolName) })),
      headers: pergHeaders(result.response.headers),
    };
  },

  // Two turns of a conversation, the first turn's response messages kept as history (what a chat
  // app does). With `store` as it is, the SDK sends the earlier answer as an item_reference.
  async "ai-two-turns"() {
    const providerOptions = env.PERG_STORE === "false" ? { openai: { store: false } } : undefined;
    const first = await generateText({ model: provider(model), prompt, maxOutputTokens, maxRetries: 0, providerOptions });
    const messages = [{ role: "user", content: prompt }, ...first.response.messages, { role: "user", content: "And again?" }];
    const second = await generateText({ model: provider(model), messages, maxOutputTokens, maxRetries: 0, providerOptions });
    return { texts: [first.text, second.text], headers: pergHeaders(second.response.headers) };
  },

  async "ai-chat-generate"() {
    const result = await generateText({ model: provider.chat(model), prompt, maxOutputTokens, maxRetries: 0 });
    return { text: result.text, headers: pergHeaders(result.response.headers) };
  },

  // The openai Node SDK: Responses, streamed and not, and chat completions.
  async "openai-responses"() {
    const { data, response } = await sdk.responses.create({ model, input: prompt, max_output_tokens: maxOutputTokens }).withResponse();
    return { text: data.output_text, id: data.id, status: data.status, output: data.output, usage: data.usage, headers: pergHeaders(response.headers) };
  },

  async "openai-responses-stream"() {
    const { data: stream, response } = await sdk.responses
      .create({ model, input: prompt, max_output_tokens: maxOutputTokens, stream: true })
      .withResponse();
    const events = [];
    let text = "";
    let completed = null;
    for await (const event of stream) {
      events.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") completed = event.response;
    }
    // the final response's own text: its message items' output_text parts
    const completedText = (completed?.output ?? [])
      .filter((item) => item.type === "message")
      .flatMap((item) => item.content.filter((part) => part.type === "output_text").map((part) => part.text))
      .join("");
    return { text, events, completedText, completedStatus: completed?.status ?? null, headers: pergHeaders(response.headers) };
  },

  async "openai-chat"() {
    const { data, response } = await sdk.chat.completions
      .create({ model, messages: [{ role: "user", content: prompt }], max_tokens: maxOutputTokens })
      .withResponse();
    return { text: data.choices[0].message.content, headers: pergHeaders(response.headers) };
  },

  // Why the -B64 header exists: a non-ASCII preference in a plain header never leaves Node.
  async "plain-header-non-ascii"() {
    const preferences = JSON.parse(env.PERG_PREFERENCES);
    const plain = new OpenAI({ baseURL, apiKey, maxRetries: 0, defaultHeaders: { "X-Perg-Preferences": JSON.stringify(preferences) } });
    await plain.chat.completions.create({ model, messages: [{ role: "user", content: prompt }] });
    return { sent: true };
  },
};

const name = process.argv[2];
if (!(name in scenarios)) {
  console.error(`unknown scenario ${name}; one of: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await scenarios[name]()));
} catch (error) {
  const cause = error?.cause;
  console.log(
    JSON.stringify({
      error: {
        name: error?.name,
        message: String(error?.message ?? error),
        status: error?.status ?? error?.statusCode ?? null,
        body: error?.responseBody ?? error?.error ?? null,
        cause: cause ? { name: cause.name, message: String(cause.message ?? cause), code: cause.code ?? null } : null,
      },
    }),
  );
  process.exit(1);
}
