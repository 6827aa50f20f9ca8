namespace AdapterServe.Modeling.Tokenization;

/// <summary>A loaded Hugging Face tokenizer (tokenizer.json + tokenizer_config.json). Plain .NET data only.</summary>
public interface ITextTokenizer
{
    int VocabSize { get; }
    int? BosTokenId { get; }
    /// <summary>Every id that ends generation (eos of the tokenizer config plus those of the model config).</summary>
    IReadOnlyList<int> EosTokenIds { get; }

    /// <param name="addSpecialTokens">Add bos (and eos) as tokenizer_config.json says (<c>add_bos_token</c>).</param>
    IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true);
    string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true);
    /// <summary>The text of one token as the OpenAI <c>logprobs.tokens</c> field shows it.</summary>
    string TokenText(int id);
    bool IsSpecial(int id);
    /// <summary>Renders a chat as a prompt string; throws <see cref="ChatTemplateException"/> when no template applies.</summary>
    string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true);
}

public sealed record ChatMessage(string Role, string Content);

public sealed class ChatTemplateException(string message) : Exception(message);
