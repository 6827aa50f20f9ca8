using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// Writes a real byte-level BPE tokenizer (GPT-2/SmolLM layout: 256 byte tokens, GPT-2 split regex, merges) for the
/// demo model and the tests. The merges are learned, deterministically, by <see cref="BytePairTrainer"/> over an
/// embedded English text. Specials: <c>&lt;|endoftext|&gt;</c> (id 0, bos and eos), <c>&lt;|im_start|&gt;</c> (1),
/// <c>&lt;|im_end|&gt;</c> (2); the chat template is ChatML. Every id is below <c>vocabSize</c>
/// (259 to 777: the embedded text allows no more merges).
/// </summary>
public static class DemoTokenizer
{
    public const string EndOfText = "<|endoftext|>";
    public const string ImStart = "<|im_start|>";
    public const string ImEnd = "<|im_end|>";

    public const string ChatMlTemplate =
        @"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    private static readonly string[] Specials = [EndOfText, ImStart, ImEnd];

    /// <summary>Smallest vocabulary: the three specials and the 256 byte tokens, no merges.</summary>
    public const int MinVocabSize = 3 + 256;

    /// <summary>Writes tokenizer.json and tokenizer_config.json into <paramref name="directory"/> (created if needed).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Below <see cref="MinVocabSize"/>, or more merges than the embedded text allows.</exception>
    public static void Write(string directory, int vocabSize = 512)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, MinVocabSize);
        var (merges, created) = BytePairTrainer.Learn(
            BytePairTrainer.Words(Corpus, new Regex(ByteLevelSegmentEncoder.Gpt2SplitPattern)), vocabSize - MinVocabSize);
        if (created < vocabSize - MinVocabSize)
            throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize,
                $"The embedded training text yields at most {MinVocabSize + created} tokens.");

        var vocab = new List<string>(Specials);
        for (int b = 0; b < 256; b++)
            vocab.Add(ByteLevelAlphabet.CharOf((byte)b).ToString());
        var known = vocab.ToHashSet(StringComparer.Ordinal);
        foreach (var (left, right) in merges)
            if (known.Add(left + right))
                vocab.Add(left + right);

        Directory.CreateDirectory(directory);
        var options = new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var stream = File.Create(Path.Combine(directory, "tokenizer.json")))
        using (var w = new Utf8JsonWriter(stream, options))
            WriteTokenizerJson(w, vocab, merges);
        using (var stream = File.Create(Path.Combine(directory, "tokenizer_config.json")))
        using (var w = new Utf8JsonWriter(stream, options))
            WriteTokenizerConfig(w);
    }

    private static void WriteTokenizerJson(Utf8JsonWriter w, List<string> vocab, IReadOnlyList<(string Left, string Right)> merges)
    {
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");
        w.WriteStartArray("added_tokens");
        for (int id = 0; id < Specials.Length; id++)
        {
            w.WriteStartObject();
            w.WriteNumber("id", id);
            w.WriteString("content", Specials[id]);
            w.WriteBoolean("single_word", false);
            w.WriteBoolean("lstrip", false);
            w.WriteBoolean("rstrip", false);
            w.WriteBoolean("normalized", false);
            w.WriteBoolean("special", true);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteNull("normalizer");

        w.WriteStartObject("pre_tokenizer");
        w.WriteString("type", "Sequence");
        w.WriteStartArray("pretokenizers");
        w.WriteStartObject();
        w.WriteString("type", "Split");
        w.WriteStartObject("pattern");
        w.WriteString("Regex", ByteLevelSegmentEncoder.Gpt2SplitPattern);
        w.WriteEndObject();
        w.WriteString("behavior", "Isolated");
        w.WriteBoolean("invert", false);
        w.WriteEndObject();
        WriteByteLevel(w, null);
        w.WriteEndArray();
        w.WriteEndObject();

        WriteByteLevel(w, "post_processor");
        WriteByteLevel(w, "decoder");

        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        w.WriteBoolean("ignore_merges", false);
        w.WriteStartObject("vocab");
        for (int id = 0; id < vocab.Count; id++)
            w.WriteNumber(vocab[id], id);
        w.WriteEndObject();
        w.WriteStartArray("merges");
        foreach (var (left, right) in merges)
            w.WriteStringValue(left + " " + right);
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteByteLevel(Utf8JsonWriter w, string? property)
    {
        if (property is null)
            w.WriteStartObject();
        else
            w.WriteStartObject(property);
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", false);
        w.WriteBoolean("trim_offsets", true);
        w.WriteBoolean("use_regex", false);
        w.WriteEndObject();
    }

    private static void WriteTokenizerConfig(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
        w.WriteString("bos_token", EndOfText);
        w.WriteString("eos_token", EndOfText);
        w.WriteString("pad_token", EndOfText);
        w.WriteNull("unk_token");
        w.WriteBoolean("add_bos_token", false);
        w.WriteBoolean("add_eos_token", false);
        w.WriteStartArray("additional_special_tokens");
        w.WriteStringValue(ImStart);
        w.WriteStringValue(ImEnd);
        w.WriteEndArray();
        w.WriteBoolean("clean_up_tokenization_spaces", false);
        w.WriteNumber("model_max_length", 2048);
        w.WriteString("chat_template", ChatMlTemplate);
        w.WriteEndObject();
    }

    /// <summary>Training text for the merges (written for this project).</summary>
    private const string Corpus = """
        The lighthouse keeper woke before the sun, as she had done every morning for thirty-one years. She climbed the
        one hundred and twelve steps of the tower, counted the gulls on the rail, and wrote the weather in her book:
        wind from the north-west, light rain, the sea calm and grey. Then she made tea, sat by the window, and watched
        the fishing boats go out one after another into the morning. "Good luck," she said to each of them, although
        nobody could hear her. The boats came back in the evening with nets full of silver fish, and the children of
        the village ran down to the harbour to meet them.

        A small server answers many requests at once. Each request brings a prompt, a model name and a few settings:
        how many tokens to write, how warm the sampling should be, and when to stop. The server turns the prompt into
        numbers, runs the model one step at a time, and sends every new piece of text back as soon as it is ready.
        When two requests ask for different adapters, the server keeps both in memory and applies the right one to
        each row of the batch. Nothing is written to disk, and nothing waits longer than it has to.

        In the garden there were seven apple trees, three pear trees and a very old fig tree that nobody had planted.
        Every autumn the family picked the fruit together, filled twenty baskets, and gave half of it to their
        neighbours. The youngest boy liked the figs best; his sister preferred the small red apples that grew near
        the wall. Their grandmother, who remembered the garden when it was only grass and stones, told them stories
        while they worked: about the winter the river froze, about the summer of the great storm, and about the
        travelling musician who stayed for a week in 1962 and taught everyone in the street to sing.
        """;
}

/// <summary>
/// A minimal byte-level BPE trainer: repeatedly merges the most frequent adjacent pair of symbols (ties broken by
/// ordinal order of the pair), as Hugging Face's BpeTrainer does, until the vocabulary has the requested size.
/// </summary>
internal static class BytePairTrainer
{
    /// <summary>Pre-tokenized words of a text with their counts, each spelled in the byte-level alphabet.</summary>
    public static Dictionary<string, int> Words(string text, Regex split)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (Match m in split.Matches(text))
        {
            string word = ByteLevelAlphabet.Encode(m.Value);
            counts[word] = counts.GetValueOrDefault(word) + 1;
        }
        return counts;
    }

    /// <summary>Merges until they have created <paramref name="newTokens"/> new tokens or no pair is left.</summary>
    /// <returns>The merges in order, and how many distinct new tokens they create.</returns>
    public static (IReadOnlyList<(string Left, string Right)> Merges, int Created) Learn(Dictionary<string, int> wordCounts, int newTokens)
    {
        var words = wordCounts
            .OrderBy(w => w.Key, StringComparer.Ordinal)
            .Select(w => (Symbols: w.Key.Select(c => c.ToString()).ToList(), Count: w.Value))
            .ToList();
        var merges = new List<(string, string)>();
        var created = new HashSet<string>(StringComparer.Ordinal);

        while (created.Count < newTokens)
        {
            var pairCounts = new Dictionary<(string, string), int>();
            foreach (var (symbols, count) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    pairCounts[(symbols[i], symbols[i + 1])] = pairCounts.GetValueOrDefault((symbols[i], symbols[i + 1])) + count;
            if (pairCounts.Count == 0)
                break;

            var best = pairCounts
                .OrderByDescending(p => p.Value)
                .ThenBy(p => p.Key.Item1, StringComparer.Ordinal)
                .ThenBy(p => p.Key.Item2, StringComparer.Ordinal)
                .First().Key;
            merges.Add(best);
            created.Add(best.Item1 + best.Item2);

            foreach (var (symbols, _) in words)
            {
                for (int i = 0; i + 1 < symbols.Count; i++)
                {
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2)
                    {
                        symbols[i] += symbols[i + 1];
                        symbols.RemoveAt(i + 1);
                    }
                }
            }
        }
        return (merges, created.Count);
    }
}
