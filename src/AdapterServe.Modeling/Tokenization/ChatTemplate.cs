using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// Built-in renderings of the chat templates of the Llama-2, Llama-3 and ChatML families. No Jinja engine is
/// available on our package feed, so the family is recognised from the config's <c>chat_template</c> text (or,
/// without one, from the special tokens in the vocabulary) and rendered the way that template renders plain
/// role/content messages. Role "developer" is treated as "system".
/// </summary>
internal abstract partial class ChatTemplate
{
    public abstract string Name { get; }

    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? bos, string? eos)
    {
        var normalized = messages.Select(m => m.Role == "developer" ? m with { Role = "system" } : m).ToList();
        return RenderCore(normalized, addGenerationPrompt, bos ?? "", eos ?? "");
    }

    protected abstract string RenderCore(List<ChatMessage> messages, bool addGenerationPrompt, string bos, string eos);

    /// <summary>The built-in template for this config, or the reason there is none.</summary>
    public static (ChatTemplate? Template, string? Error) Resolve(string? templateText, Func<string, bool> hasToken)
    {
        if (templateText is null)
        {
            if (hasToken("<|im_start|>"))
                return (new ChatMl(defaultSystem: null), null);
            if (hasToken("<|start_header_id|>"))
                return (new Llama3(withBos: true), null);
            return (null, "tokenizer_config.json has no chat_template and the vocabulary has none of the chat tokens "
                          + "of a built-in family (<|im_start|>, <|start_header_id|>)");
        }

        if (templateText.Contains("<|im_start|>", StringComparison.Ordinal))
            return (new ChatMl(DefaultChatMlSystem(templateText)), null);
        if (templateText.Contains("<|start_header_id|>", StringComparison.Ordinal))
        {
            if (!templateText.Contains("Cutting Knowledge Date", StringComparison.Ordinal))
                return (new Llama3(withBos: templateText.Contains("bos_token", StringComparison.Ordinal)), null);
            Match date = DateStringLiteral().Match(templateText);
            Func<string> today = templateText.Contains("strftime_now", StringComparison.Ordinal)
                ? () => DateTime.Now.ToString("dd MMM yyyy", CultureInfo.InvariantCulture)
                : () => date.Success ? date.Groups[1].Value : "26 Jul 2024";
            return (new Llama31(today), null);
        }
        if (templateText.Contains("[INST]", StringComparison.Ordinal) && templateText.Contains("<<SYS>>", StringComparison.Ordinal))
            return (new Llama2(), null);

        return (null, "the chat_template of tokenizer_config.json is not one of the built-in families "
                      + "(Llama-2 '[INST] <<SYS>>', Llama-3 '<|start_header_id|>', ChatML '<|im_start|>') and no Jinja engine is available to render it");
    }

    /// <summary>ChatML templates such as Qwen2's and SmolLM's add a fixed system turn when the chat has none.</summary>
    private static string? DefaultChatMlSystem(string templateText)
    {
        Match m = DefaultSystemLiteral().Match(templateText);
        if (!m.Success)
            return null;
        string body = m.Groups["s"].Success ? m.Groups["s"].Value : m.Groups["d"].Value;
        return Regex.Unescape(body.Replace("\\'", "'", StringComparison.Ordinal));
    }

    [GeneratedRegex(@"'<\|im_start\|>system(?:\\n|\n)(?<s>(?:[^'\\]|\\.)*?)<\|im_end\|>(?:\\n|\n)'|""<\|im_start\|>system(?:\\n|\n)(?<d>(?:[^""\\]|\\.)*?)<\|im_end\|>(?:\\n|\n)""")]
    private static partial Regex DefaultSystemLiteral();

    [GeneratedRegex(@"set date_string = [""']([^""']+)[""']")]
    private static partial Regex DateStringLiteral();

    /// <summary>Python's <c>str.strip()</c> (Jinja's <c>trim</c>).</summary>
    protected static string Strip(string s) => s.Trim();

    /// <summary>meta-llama/Llama-2-*-chat-hf: <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;\n…\n&lt;&lt;/SYS&gt;&gt;\n\nuser [/INST] assistant &lt;/s&gt;</c>.</summary>
    private sealed class Llama2 : ChatTemplate
    {
        public override string Name => "llama-2";

        protected override string RenderCore(List<ChatMessage> messages, bool addGenerationPrompt, string bos, string eos)
        {
            string? system = null;
            var loop = messages;
            if (messages.Count > 0 && messages[0].Role == "system")
            {
                system = messages[0].Content;
                loop = messages.Skip(1).ToList();
            }

            var text = new StringBuilder();
            for (int i = 0; i < loop.Count; i++)
            {
                ChatMessage m = loop[i];
                if ((m.Role == "user") != (i % 2 == 0))
                    throw new ChatTemplateException("Conversation roles must alternate user/assistant/user/assistant/... (Llama-2 chat template)");
                string content = i == 0 && system is not null
                    ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + m.Content
                    : m.Content;
                if (m.Role == "user")
                    text.Append(bos).Append("[INST] ").Append(Strip(content)).Append(" [/INST]");
                else if (m.Role == "assistant")
                    text.Append(' ').Append(Strip(content)).Append(' ').Append(eos);
            }
            return text.ToString();
        }
    }

    /// <summary>meta-llama/Meta-Llama-3-*-Instruct: header tokens around each role, <c>&lt;|eot_id|&gt;</c> after each turn.</summary>
    private sealed class Llama3(bool withBos) : ChatTemplate
    {
        public override string Name => "llama-3";

        protected override string RenderCore(List<ChatMessage> messages, bool addGenerationPrompt, string bos, string eos)
        {
            var text = new StringBuilder();
            if (withBos && messages.Count > 0)
                text.Append(bos);
            foreach (ChatMessage m in messages)
                text.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(Strip(m.Content)).Append("<|eot_id|>");
            if (addGenerationPrompt)
                text.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
            return text.ToString();
        }
    }

    /// <summary>Llama-3.1/3.2 Instruct without tools: a system turn with the knowledge cut-off and date always comes first.</summary>
    private sealed class Llama31(Func<string> dateString) : ChatTemplate
    {
        public override string Name => "llama-3.1";

        protected override string RenderCore(List<ChatMessage> messages, bool addGenerationPrompt, string bos, string eos)
        {
            string system = "";
            var loop = messages;
            if (messages.Count > 0 && messages[0].Role == "system")
            {
                system = Strip(messages[0].Content);
                loop = messages.Skip(1).ToList();
            }

            var text = new StringBuilder(bos);
            text.Append("<|start_header_id|>system<|end_header_id|>\n\n")
                .Append("Cutting Knowledge Date: December 2023\n")
                .Append("Today Date: ").Append(dateString()).Append("\n\n")
                .Append(system).Append("<|eot_id|>");
            foreach (ChatMessage m in loop)
            {
                if (m.Role is "tool" or "ipython")
                    // The template writes tool output with tojson (a string is iterable in Jinja).
                    text.Append("<|start_header_id|>ipython<|end_header_id|>\n\n").Append(JsonString(m.Content)).Append("<|eot_id|>");
                else
                    text.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(Strip(m.Content)).Append("<|eot_id|>");
            }
            if (addGenerationPrompt)
                text.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
            return text.ToString();
        }

        /// <summary>Python's <c>json.dumps(s, ensure_ascii=False)</c> for a string.</summary>
        private static string JsonString(string s)
        {
            var json = new StringBuilder("\"");
            foreach (char c in s)
            {
                json.Append(c switch
                {
                    '"' => "\\\"",
                    '\\' => "\\\\",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    '\t' => "\\t",
                    '\b' => "\\b",
                    '\f' => "\\f",
                    < ' ' => $"\\u{(int)c:x4}",
                    _ => c.ToString(),
                });
            }
            return json.Append('"').ToString();
        }
    }

    /// <summary>ChatML (Qwen2, SmolLM, …): <c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c>.</summary>
    private sealed class ChatMl(string? defaultSystem) : ChatTemplate
    {
        public override string Name => "chatml";

        protected override string RenderCore(List<ChatMessage> messages, bool addGenerationPrompt, string bos, string eos)
        {
            var text = new StringBuilder();
            for (int i = 0; i < messages.Count; i++)
            {
                if (i == 0 && defaultSystem is not null && messages[0].Role != "system")
                    text.Append("<|im_start|>system\n").Append(defaultSystem).Append("<|im_end|>\n");
                text.Append("<|im_start|>").Append(messages[i].Role).Append('\n').Append(messages[i].Content).Append("<|im_end|>\n");
            }
            if (addGenerationPrompt)
                text.Append("<|im_start|>assistant\n");
            return text.ToString();
        }
    }
}
