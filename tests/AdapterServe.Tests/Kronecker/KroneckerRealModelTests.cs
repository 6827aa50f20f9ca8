using System.Text.RegularExpressions;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterHttp;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Kronecker;

/// <summary>
/// LoKr and MoKA adapters written by the test for the real stories260K model (small random factors, so the story stays
/// the base's story) are served through the HTTP API: the text is English words close to the base story, while the
/// logprobs show the adapter is really applied.
/// </summary>
public partial class KroneckerRealModelTests
{
    [Fact]
    public async Task Stories260K_lokr_and_moka_written_by_the_test_tell_coherent_stories_through_the_http_api()
    {
        string model = SharedModels.Require("stories260K-hf");
        var stories = ModelConfig.Load(Path.Combine(model, "config.json"));
        var lokr = KroneckerTestFiles.Lokr(stories, ProjectionNames.All, r: 4, alpha: 4, w2: FactorForm.LowRank, seed: 901, magnitude: 0.3f);
        var moka = KroneckerTestFiles.Moka(stories, ProjectionNames.All, p => KroneckerServingTests.MokaComponents(stories, p),
            scaling: 1.0, seed: 902, magnitude: 0.3f, asPattern: true);

        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Engine:ModelPath"] = model });
        await server.UploadOkAsync("story-lokr", lokr);
        await server.UploadOkAsync("story-moka", moka);

        var request = new GreedyRequest(AdapterServer.Base, "Once upon a time", 48);
        var baseStory = await server.CompleteAsync(request);
        foreach (var name in new[] { "story-lokr", "story-moka" })
        {
            var story = await server.CompleteAsync(request with { Model = name });
            TestContext.Current.SendDiagnosticMessage($"base: {baseStory.Text}\n{name}: {story.Text}");
            Assert.NotEqual(baseStory.Logprobs, story.Logprobs);                       // the adapter is applied
            var words = Words(story.Text);
            Assert.True(words.Count >= 20, $"{name}: too few words: {story.Text}");
            Assert.All(words, w => Assert.Matches(WordRegex(), w));                    // English words, not byte soup
            var baseWords = Words(baseStory.Text).ToHashSet(StringComparer.OrdinalIgnoreCase);
            double shared = words.Count(baseWords.Contains) / (double)words.Count;
            Assert.True(shared >= 0.6, $"{name}: only {shared:P0} of its words are the base story's: {story.Text}");
        }
    }

    private static List<string> Words(string text) =>
        text.Split([' ', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries).Select(w => w.Trim('.', ',', '!', '?', '"', '\'', ':', ';')).Where(w => w.Length > 0).ToList();

    [GeneratedRegex(@"^[A-Za-z]+(?:'[a-z]+)?$")]
    private static partial Regex WordRegex();
}
