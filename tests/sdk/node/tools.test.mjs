// The official `openai` Node SDK against a running gateway: a forced tool
// call (named and `required`), streamed and not, `n` choices, a tool round
// trip, and `responses.create` streamed and not, with usage.
// Run by scripts/node-sdk-test.sh (LORAGATE_URL, LORAGATE_MODEL).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';

// The SDK is installed under NODE_PATH, which ES modules do not search.
const require = createRequire(path.join(process.env.NODE_PATH, 'noop.js'));
const { default: OpenAI } = await import(require.resolve('openai'));

const client = new OpenAI({
  baseURL: `${process.env.LORAGATE_URL}/v1`,
  apiKey: 'unused',
  maxRetries: 0,
  timeout: 300_000,
});
const model = process.env.LORAGATE_MODEL;
const CITIES = ['Paris', 'Tokyo', 'Lima'];
const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string', enum: CITIES },
        days: { type: 'integer', minimum: 1, maximum: 7 },
      },
      required: ['city', 'days'],
      additionalProperties: false,
    },
  },
};
const messages = [{ role: 'user', content: 'What is the weather in Paris for 3 days?' }];

function checkArguments(text) {
  const args = JSON.parse(text);
  assert.deepEqual(Object.keys(args).sort(), ['city', 'days']);
  assert.ok(CITIES.includes(args.city), text);
  assert.ok(Number.isInteger(args.days) && args.days >= 1 && args.days <= 7, text);
}

for (const [label, toolChoice] of [
  ['named', { type: 'function', function: { name: 'get_weather' } }],
  ['required', 'required'],
]) {
  test(`forced call (${label})`, async () => {
    const completion = await client.chat.completions.create({
      model, messages, tools: [weather], tool_choice: toolChoice, max_tokens: 96, temperature: 0,
    });
    const choice = completion.choices[0];
    assert.equal(choice.finish_reason, 'tool_calls');
    const call = choice.message.tool_calls[0];
    assert.match(call.id, /^call_/);
    assert.equal(call.function.name, 'get_weather');
    checkArguments(call.function.arguments);
  });

  test(`forced call streamed (${label})`, async () => {
    const runner = client.chat.completions.stream({
      model, messages, tools: [weather], tool_choice: toolChoice, max_tokens: 96, temperature: 0,
    });
    const final = await runner.finalChatCompletion();
    const call = final.choices[0].message.tool_calls[0];
    assert.equal(final.choices[0].finish_reason, 'tool_calls');
    checkArguments(call.function.arguments);
  });
}

test('several choices (n = 2), streamed and not', async () => {
  const ask = { model, messages, max_tokens: 6, temperature: 0, n: 2 };
  const whole = await client.chat.completions.create(ask);
  assert.deepEqual(whole.choices.map((c) => c.index), [0, 1]);
  const runner = client.chat.completions.stream({ ...ask, stream_options: { include_usage: true } });
  const streamed = await runner.finalChatCompletion();
  assert.deepEqual(
    streamed.choices.map((c) => [c.index, c.message.content, c.finish_reason]),
    whole.choices.map((c) => [c.index, c.message.content, c.finish_reason]),
  );
  assert.equal(streamed.usage.completion_tokens, whole.usage.completion_tokens);
});

test('tool round trip', async () => {
  const first = await client.chat.completions.create({
    model, messages, tools: [weather], tool_choice: 'required', max_tokens: 96, temperature: 0,
  });
  const message = first.choices[0].message;
  const answer = await client.chat.completions.create({
    model,
    messages: [...messages, message, { role: 'tool', tool_call_id: message.tool_calls[0].id, content: 'sunny' }],
    tools: [weather], tool_choice: 'none', max_tokens: 16, temperature: 0,
  });
  assert.ok(answer.choices[0].message.content);
});

test('responses.create, streamed and not, with usage', async () => {
  const response = await client.responses.create({
    model, input: 'What is the capital of France?', max_output_tokens: 16, temperature: 0,
  });
  assert.ok(response.output_text);
  assert.equal(response.usage.total_tokens, response.usage.input_tokens + response.usage.output_tokens);
  const stream = await client.responses.create({
    model, input: 'What is the capital of France?', max_output_tokens: 16, temperature: 0, stream: true,
  });
  let text = '';
  let last;
  for await (const event of stream) {
    if (event.type === 'response.output_text.delta') text += event.delta;
    last = event;
  }
  assert.ok(['response.completed', 'response.incomplete'].includes(last.type));
  assert.equal(last.response.output_text ?? text, text);
  assert.ok(last.response.usage.output_tokens > 0);
});

test('stateless: store is refused with the error envelope', async () => {
  await assert.rejects(
    client.responses.create({ model, input: 'hi', store: true }),
    (error) => error.status === 400 && /keeps no responses/.test(error.message),
  );
});
