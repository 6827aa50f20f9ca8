using System.Globalization;
using System.Text.Json.Nodes;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Tests.Tokenization;

/// <summary>
/// Built-in renderings of public chat templates. Expected strings are written by hand from the templates (and
/// agree with @huggingface/jinja rendering the same templates).
/// </summary>
public class ChatTemplateTests
{
    private static readonly ChatMessage[] FullChat =
    [
        new("system", "You are terse."),
        new("user", "Hello!"),
        new("assistant", " Hi there. "),
        new("user", "Tell me a joke."),
    ];

    private static readonly ChatMessage[] SingleQuestion = [new("user", "  What is 2+2?  ")];

    /// <summary>The demo tokenizer plus the family's special tokens, with the given template in its config.</summary>
    private static HfTokenizer Tokenizer(string? template, string bos, string eos, params string[] extraTokens) =>
        HfTokenizer.Load(TokenizerFixtures.DemoVariant(
            tokenizer => TokenizerFixtures.AddTokens(tokenizer, extraTokens),
            config =>
            {
                config["chat_template"] = template;
                config["bos_token"] = bos;
                config["eos_token"] = new JsonObject { ["__type"] = "AddedToken", ["content"] = eos };
            }));

    private static HfTokenizer Llama2() => Tokenizer(PublicChatTemplates.Llama2, "<s>", "</s>", "<s>", "</s>");

    private static HfTokenizer Llama3(string template) => Tokenizer(template, "<|begin_of_text|>", "<|eot_id|>",
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>");

    [Fact]
    public void Llama2_template_puts_the_system_prompt_in_the_first_instruction()
    {
        Assert.Equal(
            "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHello! [/INST] Hi there. </s><s>[INST] Tell me a joke. [/INST]",
            Llama2().ApplyChatTemplate(FullChat));
        Assert.Equal("<s>[INST] What is 2+2? [/INST]", Llama2().ApplyChatTemplate(SingleQuestion, addGenerationPrompt: false));
    }

    [Fact]
    public void Llama2_template_rejects_roles_that_do_not_alternate()
    {
        var error = Assert.Throws<ChatTemplateException>(() =>
            Llama2().ApplyChatTemplate([new("user", "a"), new("user", "b")]));
        Assert.Contains("alternate", error.Message);
    }

    [Fact]
    public void Llama3_template_wraps_trimmed_turns_in_header_tokens()
    {
        HfTokenizer tokenizer = Llama3(PublicChatTemplates.Llama3);

        Assert.Equal("llama-3", tokenizer.ChatTemplateName);
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nHi there.<|eot_id|>"
            + "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\n",
            tokenizer.ApplyChatTemplate(FullChat));
        Assert.Equal(
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
            tokenizer.ApplyChatTemplate(SingleQuestion, addGenerationPrompt: false));
    }

    [Fact]
    public void Llama31_template_always_opens_with_a_dated_system_turn()
    {
        HfTokenizer tokenizer = Llama3(PublicChatTemplates.Llama31);
        const string header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

        Assert.Equal("llama-3.1", tokenizer.ChatTemplateName);
        Assert.Equal(
            header + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            tokenizer.ApplyChatTemplate(SingleQuestion));
        Assert.Equal(
            header + "You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWeather?<|eot_id|>"
            + "<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"temp\\\": 21}\\nsunny\"<|eot_id|>",
            tokenizer.ApplyChatTemplate([new("system", "You are terse."), new("user", "Weather?"), new("tool", "{\"temp\": 21}\nsunny")], addGenerationPrompt: false));
    }

    [Fact]
    public void Llama32_template_dates_the_system_turn_today()
    {
        // Llama-3.2's template calls strftime_now("%d %b %Y") instead of defaulting to 26 Jul 2024.
        string template = PublicChatTemplates.Llama31.Replace(
            "{%- set date_string = \"26 Jul 2024\" %}",
            "{%- if strftime_now is defined %}\n        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}");
        Assert.Contains("strftime_now", template);

        string rendered = Llama3(template).ApplyChatTemplate(SingleQuestion);

        string today = DateTime.Now.ToString("dd MMM yyyy", CultureInfo.InvariantCulture);
        Assert.Contains($"Today Date: {today}\n\n<|eot_id|>", rendered);
    }

    [Fact]
    public void Qwen2_template_adds_its_default_system_prompt_only_when_the_chat_has_none()
    {
        HfTokenizer tokenizer = Tokenizer(PublicChatTemplates.Qwen2, "<|endoftext|>", "<|im_end|>");

        Assert.Equal("chatml", tokenizer.ChatTemplateName);
        Assert.Equal(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n  What is 2+2?  <|im_end|>\n<|im_start|>assistant\n",
            tokenizer.ApplyChatTemplate(SingleQuestion));
        Assert.Equal(
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
            + "<|im_start|>assistant\n Hi there. <|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n",
            tokenizer.ApplyChatTemplate(FullChat, addGenerationPrompt: false));
    }

    [Fact]
    public void Developer_role_is_rendered_as_system()
    {
        HfTokenizer tokenizer = Tokenizer(PublicChatTemplates.Qwen2, "<|endoftext|>", "<|im_end|>");

        Assert.Equal(
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            tokenizer.ApplyChatTemplate([new("developer", "Be brief."), new("user", "Hi")]));
    }

    [Fact]
    public void Demo_tokenizer_renders_plain_chatml_and_encodes_its_markers_as_single_tokens()
    {
        HfTokenizer tokenizer = HfTokenizer.Load(TokenizerFixtures.Demo());

        string prompt = tokenizer.ApplyChatTemplate([new("user", "Hi there")]);

        Assert.Equal("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", prompt);
        // transformers.js ids for this very string
        Assert.Equal([1, 120, 118, 264, 13, 75, 108, 262, 266, 2, 13, 1, 479, 291, 119, 296, 119, 13], tokenizer.Encode(prompt, addSpecialTokens: false));
    }

    [Fact]
    public void Without_a_template_the_chat_tokens_of_the_vocabulary_choose_the_family()
    {
        HfTokenizer chatMl = HfTokenizer.Load(TokenizerFixtures.DemoVariant(editConfig: config => config.Remove("chat_template")));
        HfTokenizer llama3 = HfTokenizer.Load(TokenizerFixtures.DemoVariant(
            tokenizer =>
            {
                TokenizerFixtures.RenameToken(tokenizer, "<|im_start|>", "<|reserved_1|>");
                TokenizerFixtures.RenameToken(tokenizer, "<|im_end|>", "<|reserved_2|>");
                TokenizerFixtures.AddTokens(tokenizer, "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>");
            },
            config =>
            {
                config.Remove("chat_template");
                config["bos_token"] = "<|begin_of_text|>";
                config["eos_token"] = "<|eot_id|>";
            }));

        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n", chatMl.ApplyChatTemplate([new("user", "Hi")], addGenerationPrompt: false));
        Assert.Equal("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
            llama3.ApplyChatTemplate([new("user", "Hi")], addGenerationPrompt: false));
    }

    [Fact]
    public void Unknown_template_family_is_refused_with_a_clear_message()
    {
        HfTokenizer tokenizer = Tokenizer(PublicChatTemplates.Gemma2, "<|endoftext|>", "<|endoftext|>");

        var error = Assert.Throws<ChatTemplateException>(() => tokenizer.ApplyChatTemplate(SingleQuestion));
        Assert.Contains("not one of the built-in families", error.Message);
    }
}
