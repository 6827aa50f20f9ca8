using System.Text.Json.Nodes;

namespace AdapterServe.Tests.Server;

/// <summary>Swagger UI and the OpenAPI document.</summary>
[Collection(RealServerCollection.Name)]
public sealed class ApiDocsTests(RealServer server)
{
    [Fact]
    public async Task OpenAPI_document_describes_every_endpoint_with_schemas_and_examples()
    {
        var (status, doc) = await Http.GetAsync(server.Client, "/swagger/v1/swagger.json");
        Assert.Equal(200, status);
        var paths = doc!["paths"]!.AsObject();
        foreach (var path in new[] { "/v1/completions", "/v1/chat/completions", "/v1/models", "/health" })
            Assert.True(paths.ContainsKey(path), $"{path} missing from the OpenAPI document");

        var completions = paths["/v1/completions"]!["post"]!;
        var request = completions["requestBody"]!["content"]!["application/json"]!;
        Assert.NotNull(request["example"]);
        Assert.Equal("demo", (string?)request["example"]!["model"]);
        foreach (var code in new[] { "200", "400", "401", "404", "413", "429", "503" })
            Assert.True(completions["responses"]!.AsObject().ContainsKey(code), $"response {code} undocumented");
        Assert.EndsWith("/CompletionResponse", (string?)completions["responses"]!["200"]!["content"]!["text/event-stream"]!["schema"]!["$ref"]);
        Assert.EndsWith("/CompletionResponse", (string?)completions["responses"]!["200"]!["content"]!["application/json"]!["schema"]!["$ref"]);
        Assert.EndsWith("/ChatCompletionChunk", (string?)paths["/v1/chat/completions"]!["post"]!["responses"]!["200"]!["content"]!["text/event-stream"]!["schema"]!["$ref"]);
        Assert.NotNull(completions["responses"]!["200"]!["content"]!["application/json"]!["example"]);

        var schemas = doc["components"]!["schemas"]!.AsObject();
        var completionRequest = schemas["CompletionRequest"]!["properties"]!.AsObject();
        foreach (var field in new[] { "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "echo", "logprobs", "stream", "stream_options", "user", "top_k", "ignore_eos", "adapters" })
            Assert.True(completionRequest.ContainsKey(field), $"CompletionRequest.{field} missing");
        Assert.Equal(4, completionRequest["prompt"]!["oneOf"]!.AsArray().Count(o => o!["type"] is not null));   // string, [string], [id], [[id]] (and null)
        Assert.Equal("Once upon a time", (string?)completionRequest["prompt"]!["example"]);
        Assert.Equal(32, (int)completionRequest["max_tokens"]!["example"]!);
        var chatRequest = schemas["ChatCompletionRequest"]!["properties"]!.AsObject();
        foreach (var field in new[] { "messages", "max_completion_tokens", "max_tokens", "logprobs", "top_logprobs" })
            Assert.True(chatRequest.ContainsKey(field), $"ChatCompletionRequest.{field} missing");
        Assert.True(schemas.ContainsKey("ErrorResponse"));
        Assert.Contains("Bearer", doc["components"]!["securitySchemes"]!.ToJsonString(), StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Swagger_UI_is_served_at_swagger()
    {
        using var response = await server.Client.GetAsync("/swagger/index.html", TestContext.Current.CancellationToken);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.Contains("swagger-ui", await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }
}
