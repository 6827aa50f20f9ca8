using System.Text.Json.Nodes;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Tests.Tokenization;

public class HfTokenizerLoadTests
{
    [Fact]
    public void Missing_tokenizer_json_is_reported_with_its_path()
    {
        string dir = TokenizerFixtures.NewTempDirectory("empty");

        var error = Assert.Throws<FileNotFoundException>(() => HfTokenizer.Load(dir));
        Assert.Contains(Path.Combine(dir, "tokenizer.json"), error.Message);
    }

    [Fact]
    public void Non_bpe_model_is_refused()
    {
        string dir = TokenizerFixtures.DemoVariant(tokenizer => tokenizer["model"]!["type"] = "WordPiece");

        var error = Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(dir));
        Assert.Contains("model.type 'WordPiece' is not supported", error.Message);
    }

    [Fact]
    public void Bpe_without_byte_level_or_byte_fallback_is_refused()
    {
        string dir = TokenizerFixtures.DemoVariant(tokenizer => tokenizer["pre_tokenizer"] = new JsonObject { ["type"] = "Whitespace" });

        var error = Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(dir));
        Assert.Contains("unsupported BPE tokenizer", error.Message);
    }

    [Fact]
    public void Bos_token_missing_from_the_vocabulary_is_refused()
    {
        string dir = TokenizerFixtures.DemoVariant(editConfig: config => config["bos_token"] = "<s>");

        var error = Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(dir));
        Assert.Contains("bos_token '<s>'", error.Message);
    }

    [Fact]
    public void Template_post_processor_adds_bos_unless_the_config_says_otherwise()
    {
        static void AddTemplate(JsonObject tokenizer) => tokenizer["post_processor"] = JsonNode.Parse("""
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [],
             "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}
            """);
        var following = HfTokenizer.Load(TokenizerFixtures.DemoVariant(AddTemplate, config => config.Remove("add_bos_token")));
        var overridden = HfTokenizer.Load(TokenizerFixtures.DemoVariant(AddTemplate));

        Assert.Equal([0, 75, 104, 287, 114], following.Encode("Hello"));
        Assert.Equal([75, 104, 287, 114], following.Encode("Hello", addSpecialTokens: false));
        Assert.Equal([75, 104, 287, 114], overridden.Encode("Hello")); // add_bos_token: false
    }

    [Fact]
    public void Added_tokens_are_matched_whole_and_longest_first()
    {
        string dir = TokenizerFixtures.DemoVariant(tokenizer => TokenizerFixtures.AddTokens(tokenizer, "<|im", "<|im_start|>x"));
        HfTokenizer tokenizer = HfTokenizer.Load(dir);
        int im = tokenizer.TokenId("<|im")!.Value, imStartX = tokenizer.TokenId("<|im_start|>x")!.Value;

        Assert.Equal([imStartX, im, 1], tokenizer.Encode("<|im_start|>x<|im<|im_start|>"));
        Assert.Equal(514, tokenizer.VocabSize);
    }
}
