using System.Text.Json.Nodes;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Tests.Tokenization;

/// <summary>
/// The real stories260K tokenizer (Llama-2-style SentencePiece BPE with byte fallback). Expected ids were computed
/// with Hugging Face transformers.js 4.3.1 (AutoTokenizer on ../shared/models/stories260K-hf), not with this code.
/// </summary>
public class SentencePieceTokenizerTests
{
    private static HfTokenizer Load(IReadOnlyList<int>? extraEos = null) =>
        HfTokenizer.Load(TokenizerFixtures.Stories260KDirectory(), extraEos);

    [Theory]
    [InlineData("Once upon a time", new[] { 1, 403, 407, 261, 378 })]
    [InlineData("Hello, world!", new[] { 1, 346, 306, 414, 432, 263, 304, 341, 443 })]
    [InlineData("The quick brown fox jumps over the lazy dog.", new[] { 1, 291, 410, 456, 425, 417, 340, 268, 420, 327, 416, 272, 414, 444, 410, 449, 425, 423, 427, 419, 334, 330, 265, 278, 412, 451, 422, 400, 428, 426 })]
    [InlineData("Lily and Tim played in the park. They were happy!", new[] { 1, 317, 269, 326, 337, 266, 322, 265, 282, 295, 433, 426, 342, 382, 276, 393, 443 })]
    [InlineData("Numbers: 0123456789, 3.14 and 42%", new[] { 1, 410, 458, 425, 423, 430, 285, 419, 467, 410, 477, 475, 479, 472, 484, 480, 490, 491, 487, 483, 432, 410, 472, 426, 475, 484, 269, 410, 484, 479, 501 })]
    [InlineData("line one\nline two\n\nline four", new[] { 1, 278, 271, 411, 353, 411, 13, 421, 271, 411, 259, 424, 414, 13, 13, 421, 271, 411, 272, 277, 420 })]
    [InlineData("Café déjà vu, naïve façade — São Paulo", new[] { 1, 410, 457, 412, 431, 485, 279, 485, 449, 198, 163, 410, 435, 425, 432, 297, 412, 198, 178, 360, 272, 412, 198, 170, 380, 411, 410, 481, 301, 198, 166, 414, 410, 460, 412, 425, 421, 414 })]
    [InlineData("Emoji: 😀🚀 and ❤️", new[] { 1, 410, 459, 423, 414, 449, 417, 467, 410, 243, 162, 155, 131, 243, 162, 157, 131, 269, 410, 229, 160, 167, 242, 187, 146 })]
    [InlineData("  leading and trailing spaces  ", new[] { 1, 410, 410, 278, 411, 380, 299, 269, 259, 420, 412, 290, 299, 262, 427, 412, 331, 419, 410, 410 })]
    [InlineData("tabs\tand\r\nwindows newlines", new[] { 1, 259, 412, 430, 419, 12, 412, 264, 16, 13, 424, 417, 264, 327, 419, 404, 424, 421, 271, 406 })]
    [InlineData("日本語のテキスト", new[] { 1, 410, 233, 154, 168, 233, 159, 175, 235, 173, 161, 230, 132, 177, 230, 134, 137, 230, 133, 176, 230, 133, 188, 230, 134, 139 })]
    [InlineData("Hello</s>world<s> again", new[] { 1, 346, 306, 414, 2, 263, 304, 341, 1, 410, 261, 428, 412, 271 })]
    [InlineData("", new[] { 1 })]
    [InlineData(" ", new[] { 1, 410, 410 })]
    [InlineData("It's a \"quoted\" word, isn't it?", new[] { 1, 359, 413, 439, 419, 261, 313, 456, 425, 309, 266, 436, 263, 304, 418, 432, 410, 293, 416, 439, 413, 312, 450 })]
    public void Encode_matches_hugging_face_ids(string text, int[] expected)
    {
        HfTokenizer tokenizer = Load();

        Assert.Equal(expected, tokenizer.Encode(text));
        Assert.Equal(expected[1..], tokenizer.Encode(text, addSpecialTokens: false));
    }

    /// <summary>
    /// Newer conversions (tokenizers ≥ 0.19, legacy=false) use a Metaspace pre-tokenizer with prepend_scheme "first"
    /// instead of the normalizer: no '▁' after an added token, none before a leading space. Ids from transformers.js.
    /// </summary>
    [Theory]
    [InlineData("Hello</s>world<s> again", new[] { 1, 346, 306, 414, 2, 424, 304, 341, 1, 261, 428, 412, 271 })]
    [InlineData("Once upon a time", new[] { 1, 403, 407, 261, 378 })]
    [InlineData("  two", new[] { 1, 410, 259, 424, 414 })]
    [InlineData("<s>Lily", new[] { 1, 1, 438, 310 })]
    public void Metaspace_first_scheme_matches_hugging_face_ids(string text, int[] expected)
    {
        string source = TokenizerFixtures.Stories260KDirectory();
        string dir = TokenizerFixtures.NewTempDirectory("stories-metaspace");
        File.Copy(Path.Combine(source, "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"));
        var tokenizer = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "tokenizer.json")))!.AsObject();
        tokenizer["normalizer"] = null;
        tokenizer["pre_tokenizer"] = new JsonObject
        {
            ["type"] = "Metaspace", ["replacement"] = "\u2581", ["prepend_scheme"] = "first", ["split"] = false,
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tokenizer.ToJsonString());

        Assert.Equal(expected, HfTokenizer.Load(dir).Encode(text));
    }

    [Theory]
    [InlineData("Once upon a time")]
    [InlineData("Café déjà vu, naïve façade — São Paulo")]
    [InlineData("Emoji: 😀🚀 and ❤️")]
    [InlineData("  leading and trailing spaces  ")]
    [InlineData("tabs\tand\r\nwindows newlines")]
    [InlineData("日本語のテキスト")]
    public void Decode_round_trips_text_without_special_tokens(string text)
    {
        HfTokenizer tokenizer = Load();

        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));
    }

    [Fact]
    public void Decode_matches_hugging_face_with_and_without_special_tokens()
    {
        HfTokenizer tokenizer = Load();
        int[] ids = [1, 346, 306, 414, 2, 263, 304, 341, 1, 410, 261, 428, 412, 271]; // "Hello</s>world<s> again"

        // transformers.js: decode(ids, {skip_special_tokens: true}) and decode(ids)
        Assert.Equal("Hello world  again", tokenizer.Decode(ids));
        Assert.Equal("<s> Hello</s> world<s>  again", tokenizer.Decode(ids, skipSpecialTokens: false));
    }

    [Fact]
    public void Special_ids_and_vocabulary_come_from_the_tokenizer_files()
    {
        HfTokenizer tokenizer = Load(extraEos: [2, 7]);

        Assert.True(tokenizer.IsSentencePiece);
        Assert.Equal(512, tokenizer.VocabSize);
        Assert.Equal(1, tokenizer.BosTokenId);
        Assert.Equal([2, 7], tokenizer.EosTokenIds);
        Assert.True(tokenizer.IsSpecial(0) && tokenizer.IsSpecial(1) && tokenizer.IsSpecial(2));
        Assert.False(tokenizer.IsSpecial(13)); // <0x0A>
        Assert.False(tokenizer.IsSpecial(403));
        Assert.False(tokenizer.IsSpecial(512));
    }

    [Fact]
    public void TokenText_shows_leading_spaces_bytes_and_partial_characters()
    {
        HfTokenizer tokenizer = Load();

        Assert.Equal(" Once", tokenizer.TokenText(403));
        Assert.Equal("e", tokenizer.TokenText(411));
        Assert.Equal("\n", tokenizer.TokenText(13));          // <0x0A>
        Assert.Equal("bytes:\\xe2", tokenizer.TokenText(229)); // <0xE2>, the first byte of '❤'
        Assert.Equal("<s>", tokenizer.TokenText(1));
        Assert.Equal("", tokenizer.TokenText(100_000));
    }

    [Fact]
    public void Chat_template_is_refused_when_the_config_has_none()
    {
        HfTokenizer tokenizer = Load();

        var error = Assert.Throws<ChatTemplateException>(() => tokenizer.ApplyChatTemplate([new ChatMessage("user", "hi")]));
        Assert.Contains("no chat_template", error.Message);
    }
}
