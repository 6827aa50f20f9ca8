using System.Text.Json.Nodes;
using AdapterServe.Modeling.Tokenization;

using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Tokenization;

/// <summary>Locates ../shared/models and builds tokenizer directories for the tokenization tests.</summary>
internal static class TokenizerFixtures
{
    /// <summary>The real stories260K tokenizer (Llama-2-style SentencePiece BPE); skips the test when shared/ is absent.</summary>
    public static string Stories260KDirectory() => AdapterServe.Tests.Infrastructure.SharedModels.Require("stories260K-hf");

    private static readonly Lazy<string> DemoDirectory = new(() =>
    {
        string dir = NewTempDirectory("demo-tokenizer");
        DemoTokenizer.Write(dir);
        return dir;
    });

    /// <summary>The generated demo tokenizer (vocabulary 512), written once per test run.</summary>
    public static string Demo() => DemoDirectory.Value;

    /// <summary>One folder per test process, removed when the process exits.</summary>
    private static readonly Lazy<string> TempRoot = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), $"adapterserve-tokenization-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(root, recursive: true); }
            catch (IOException) { }
        };
        return root;
    });

    public static string NewTempDirectory(string name)
    {
        string dir = Path.Combine(TempRoot.Value, $"{name}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>A copy of the demo tokenizer whose JSON files the caller may edit.</summary>
    public static string DemoVariant(Action<JsonObject>? editTokenizer = null, Action<JsonObject>? editConfig = null)
    {
        string dir = NewTempDirectory("demo-variant");
        foreach (string file in new[] { "tokenizer.json", "tokenizer_config.json" })
        {
            var node = JsonNode.Parse(File.ReadAllText(Path.Combine(Demo(), file)))!.AsObject();
            (file == "tokenizer.json" ? editTokenizer : editConfig)?.Invoke(node);
            File.WriteAllText(Path.Combine(dir, file), node.ToJsonString());
        }
        return dir;
    }

    /// <summary>Appends added tokens (ids after the current highest) to a tokenizer.json object.</summary>
    public static void AddTokens(JsonObject tokenizer, params string[] contents)
    {
        var added = tokenizer["added_tokens"]!.AsArray();
        int next = added.Select(t => t!["id"]!.GetValue<int>())
            .Concat(tokenizer["model"]!["vocab"]!.AsObject().Select(kv => kv.Value!.GetValue<int>()))
            .Max() + 1;
        foreach (string content in contents)
        {
            added.Add(new JsonObject
            {
                ["id"] = next++,
                ["content"] = content,
                ["single_word"] = false,
                ["lstrip"] = false,
                ["rstrip"] = false,
                ["normalized"] = false,
                ["special"] = true,
            });
        }
    }

    /// <summary>Renames a token in both the model vocabulary and the added tokens of a tokenizer.json object.</summary>
    public static void RenameToken(JsonObject tokenizer, string from, string to)
    {
        var vocab = tokenizer["model"]!["vocab"]!.AsObject();
        JsonNode id = vocab[from]!.DeepClone();
        vocab.Remove(from);
        vocab[to] = id;
        foreach (JsonNode? added in tokenizer["added_tokens"]!.AsArray())
            if (added!["content"]!.GetValue<string>() == from)
                added["content"] = to;
    }
}
