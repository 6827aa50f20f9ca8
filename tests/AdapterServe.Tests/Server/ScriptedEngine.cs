using System.Text;
using System.Threading.Channels;
using AdapterServe.Engine;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Tests.Server;

/// <summary>
/// Test double of the engine, for what the real engine cannot do on demand: still loading, queue full, failing
/// mid-generation, pausing between tokens, and showing the exact <see cref="GenerationRequest"/> the server built.
/// Every request is answered by <see cref="Script"/>.
/// </summary>
internal sealed class ScriptedEngine : IGenerationEngine
{
    public ModelInfo Model { get; } = new("scripted", 64, ByteTokenizer.Size, 1735689600, false, "test double");
    public ITextTokenizer Tokenizer { get; init; } = new ByteTokenizer();
    public AdapterServe.Modeling.ModelConfig Config { get; } = new()
    {
        HiddenSize = 8, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 4, IntermediateSize = 8, VocabSize = ByteTokenizer.Size,
    };
    public bool IsReady { get; set; } = true;
    public int RunningSequences => 0;
    public int WaitingRequests => 0;
    public EngineLoad Load { get; set; } = EngineLoad.Idle;

    /// <summary>Answers a submitted request (may throw like the engine's Submit does).</summary>
    public Func<GenerationRequest, CancellationToken, ChannelReader<GenerationEvent>> Script { get; set; } = (r, _) => Emit(r, "ok");

    public List<GenerationRequest> Submitted { get; } = [];

    public ChannelReader<GenerationEvent> Submit(GenerationRequest request, CancellationToken cancellationToken)
    {
        lock (Submitted) Submitted.Add(request);
        return Script(request, cancellationToken);
    }

    /// <summary>Each choice emits <paramref name="pieces"/> as one token each, then finishes with <c>length</c>.</summary>
    public static ChannelReader<GenerationEvent> Emit(GenerationRequest r, params string[] pieces)
    {
        var channel = Channel.CreateUnbounded<GenerationEvent>();
        for (int i = 0; i < r.N; i++)
        {
            foreach (var p in pieces) channel.Writer.TryWrite(new TokenEvent(i, 2 + p[0], p, null));
            channel.Writer.TryWrite(new FinishEvent(i, FinishReason.Length, "", r.PromptTokens.Count, pieces.Length));
        }
        channel.Writer.TryComplete();
        return channel.Reader;
    }
}

/// <summary>Ids 0 = &lt;s&gt;, 1 = &lt;/s&gt;, then one id per byte (byte + 2). Chat template: "&lt;|role|&gt;content\n" per message.</summary>
internal sealed class ByteTokenizer : ITextTokenizer
{
    public const int Size = 258;
    public int VocabSize => Size;
    public int? BosTokenId => 0;
    public IReadOnlyList<int> EosTokenIds => [1];

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true) =>
        (addSpecialTokens ? [0] : Array.Empty<int>()).Concat(Encoding.UTF8.GetBytes(text).Select(b => b + 2)).ToList();

    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true) =>
        Encoding.UTF8.GetString(ids.Where(i => i >= 2).Select(i => (byte)(i - 2)).ToArray());

    public string TokenText(int id) => id switch { 0 => "<s>", 1 => "</s>", _ => Encoding.UTF8.GetString([(byte)(id - 2)]) };
    public bool IsSpecial(int id) => id < 2;

    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true) =>
        string.Concat(messages.Select(m => $"<|{m.Role}|>{m.Content}\n")) + (addGenerationPrompt ? "<|assistant|>" : "");
}
