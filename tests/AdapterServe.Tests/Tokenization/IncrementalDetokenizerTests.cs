using System.Text;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Tests.Tokenization;

public class IncrementalDetokenizerTests
{
    private static readonly string[] Phrases =
    [
        "Once upon a time", " there was", " a girl named Lily.", "\n", "Café", " déjà vu", " 😀🚀", " ❤️", " 日本語",
        " नमस्ते", "  two spaces", "\t tab", " 42%", "!", " \"quoted\"", "'s", "—",
    ];

    public static TheoryData<string> Tokenizers => new() { "stories260K", "demo" };

    private static HfTokenizer Load(string name) =>
        HfTokenizer.Load(name == "demo" ? TokenizerFixtures.Demo() : TokenizerFixtures.Stories260KDirectory());

    private static (string Text, List<string> Chunks) Stream(ITextTokenizer tokenizer, IReadOnlyList<int> prompt, IReadOnlyList<int> generated)
    {
        var detokenizer = new IncrementalDetokenizer(tokenizer, prompt);
        var chunks = generated.Select(detokenizer.Push).ToList();
        chunks.Add(detokenizer.Flush());
        return (string.Concat(chunks), chunks);
    }

    [Theory]
    [MemberData(nameof(Tokenizers))]
    public void Chunks_of_random_token_sequences_add_up_to_the_full_decode(string name)
    {
        HfTokenizer tokenizer = Load(name);
        var random = new Random(7);

        for (int sample = 0; sample < 300; sample++)
        {
            int[] generated = Enumerable.Range(0, random.Next(1, 30)).Select(_ => random.Next(tokenizer.VocabSize)).ToArray();

            var (text, chunks) = Stream(tokenizer, [], generated);

            string full = tokenizer.Decode(generated);
            Assert.Equal(full, text);
            if (!full.Contains('\uFFFD'))
                Assert.DoesNotContain(chunks, c => c.Contains('\uFFFD'));
        }
    }

    [Theory]
    [MemberData(nameof(Tokenizers))]
    public void Chunks_of_encoded_text_never_hold_half_a_character_and_keep_every_space(string name)
    {
        HfTokenizer tokenizer = Load(name);
        var random = new Random(11);
        IReadOnlyList<int> prompt = tokenizer.Encode("Once upon a time");
        string promptText = tokenizer.Decode(prompt);

        for (int sample = 0; sample < 200; sample++)
        {
            var expected = new StringBuilder();
            for (int i = random.Next(1, 8); i > 0; i--)
                expected.Append(Phrases[random.Next(Phrases.Length)]);
            // Generated tokens as a model would emit them: the encoding of the continuation, without bos.
            IReadOnlyList<int> generated = tokenizer.Encode(expected.ToString(), addSpecialTokens: false);

            var (text, chunks) = Stream(tokenizer, prompt, generated);

            string full = tokenizer.Decode([.. prompt, .. generated]);
            Assert.StartsWith(promptText, full);
            Assert.Equal(full[promptText.Length..], text);
            Assert.DoesNotContain(chunks, c => c.Contains('\uFFFD'));
        }
    }

    [Fact]
    public void SentencePiece_word_after_the_prompt_keeps_its_leading_space()
    {
        HfTokenizer tokenizer = Load("stories260K");
        var detokenizer = new IncrementalDetokenizer(tokenizer, [1, 403]); // <s> ▁Once

        Assert.Equal(" upon", detokenizer.Push(407));
        Assert.Equal(" a", detokenizer.Push(261));
        Assert.Equal("", detokenizer.Flush());
    }

    [Fact]
    public void First_generated_word_without_a_prompt_loses_the_sentencepiece_space_like_decode()
    {
        HfTokenizer tokenizer = Load("stories260K");
        var detokenizer = new IncrementalDetokenizer(tokenizer, [1]);

        Assert.Equal("Once", detokenizer.Push(403));
        Assert.Equal(" upon", detokenizer.Push(407));
    }

    [Fact]
    public void Byte_tokens_of_an_emoji_are_held_back_until_the_character_is_complete()
    {
        HfTokenizer tokenizer = Load("stories260K");
        var detokenizer = new IncrementalDetokenizer(tokenizer, [1, 403]);

        // "😀" = F0 9F 98 80, byte-fallback ids <0xF0>=243, <0x9F>=162, <0x98>=155, <0x80>=131
        Assert.Equal(" ", detokenizer.Push(410)); // ▁
        Assert.Equal("", detokenizer.Push(243));
        Assert.Equal("", detokenizer.Push(162));
        Assert.Equal("", detokenizer.Push(155));
        Assert.Equal("😀", detokenizer.Push(131));
    }

    [Fact]
    public void Flush_releases_an_unfinished_character_as_a_replacement_character()
    {
        HfTokenizer tokenizer = Load("demo");
        var detokenizer = new IncrementalDetokenizer(tokenizer, []);

        Assert.Equal("a", detokenizer.Push(100));
        Assert.Equal("", detokenizer.Push(3 + 0xE2));
        Assert.Equal("\uFFFD", detokenizer.Flush());
    }

    [Fact]
    public void Special_tokens_are_skipped_unless_asked_for()
    {
        HfTokenizer tokenizer = Load("demo");
        var skipping = new IncrementalDetokenizer(tokenizer, []);
        var keeping = new IncrementalDetokenizer(tokenizer, [], skipSpecialTokens: false);

        Assert.Equal(["a", "", "b"], new[] { 100, 2, 101 }.Select(skipping.Push));
        Assert.Equal(["a", "<|im_end|>", "b"], new[] { 100, 2, 101 }.Select(keeping.Push));
    }
}
