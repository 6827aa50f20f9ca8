using System.Text.Json.Nodes;
using AdapterServe.Server.OpenAI;
using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// Documents a generation endpoint: the JSON body it reads itself (<c>Accepts&lt;T&gt;()</c> would also make routing
/// refuse other content types with 415, and these endpoints read JSON whatever the Content-Type, as curl -d sends a
/// form type), and its 200 answer as JSON or, with <c>stream</c>, as Server-Sent Events of chunks.
/// </summary>
internal sealed record GenerationDoc(Type Request, Type Response, Type Chunk);

/// <summary>Swagger UI at <c>/swagger</c>, the OpenAPI document at <c>/swagger/v1/swagger.json</c> (Swashbuckle).</summary>
internal static class ApiDocs
{
    public const string DocumentPath = "/swagger/v1/swagger.json";

    public static IServiceCollection AddApiDocs(this IServiceCollection services)
    {
        services.AddEndpointsApiExplorer();
        services.AddSwaggerGen(c =>
        {
            c.SwaggerDoc("v1", new OpenApiInfo
            {
                Title = "AdapterServe",
                Version = "v1",
                Description = "OpenAI-compatible completions and chat over one base model and its adapters. " +
                              "Errors are always {\"error\":{\"message\",\"type\",\"param\",\"code\"}}.",
            });
            string xml = Path.Combine(AppContext.BaseDirectory, typeof(ApiDocs).Assembly.GetName().Name + ".xml");
            if (File.Exists(xml)) c.IncludeXmlComments(xml);
            c.MapType<PromptInput>(() => OneOf(
                Schema(JsonSchemaType.String),
                Array(Schema(JsonSchemaType.String)),
                Array(Schema(JsonSchemaType.Integer)),
                Array(Array(Schema(JsonSchemaType.Integer)))));
            c.MapType<StopInput>(() => OneOf(Schema(JsonSchemaType.String), Array(Schema(JsonSchemaType.String))));
            c.MapType<ChatContent>(() => OneOf(Schema(JsonSchemaType.String), Array(new OpenApiSchema
            {
                Type = JsonSchemaType.Object,
                Properties = new Dictionary<string, IOpenApiSchema> { ["type"] = Schema(JsonSchemaType.String), ["text"] = Schema(JsonSchemaType.String) },
            })));
            c.AddSecurityDefinition("bearer", new OpenApiSecurityScheme
            {
                Type = SecuritySchemeType.Http,
                Scheme = "bearer",
                Description = "One of the --api-key values (only when keys are configured).",
            });
            c.AddSecurityRequirement(document => new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference("bearer", document)] = [] });
            c.OperationFilter<RequestExamples>();
        });
        return services;
    }

    public static WebApplication MapApiDocs(this WebApplication app)
    {
        app.UseSwagger();
        app.UseSwaggerUI(o =>
        {
            o.RoutePrefix = "swagger";
            o.SwaggerEndpoint(DocumentPath, "AdapterServe v1");
            o.DocumentTitle = "AdapterServe API";
        });
        return app;
    }

    private static OpenApiSchema Schema(JsonSchemaType type) => new() { Type = type };
    private static OpenApiSchema Array(IOpenApiSchema items) => new() { Type = JsonSchemaType.Array, Items = items };
    private static OpenApiSchema OneOf(params IOpenApiSchema[] options) => new() { OneOf = options.ToList() };

    /// <summary>Bodies and 200 answers of the generation endpoints (<see cref="GenerationDoc"/>), with whole request and response examples.</summary>
    private sealed class RequestExamples : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            (JsonNode Request, JsonNode Response)? examples = context.ApiDescription.RelativePath?.TrimEnd('/') switch
            {
                "v1/completions" => (
                    JsonNode.Parse("""{"model":"demo","prompt":"Once upon a time","max_tokens":16,"temperature":0,"logprobs":1,"stop":["\n\n"]}""")!,
                    JsonNode.Parse("""{"id":"cmpl-5c1e","object":"text_completion","created":1735689600,"model":"demo","choices":[{"index":0,"text":" there was a little girl","logprobs":{"tokens":[" there"," was"," a"," little"," girl"],"token_logprobs":[-0.21,-0.05,-0.11,-0.62,-0.4],"top_logprobs":[{" there":-0.21,",":-1.9},{" was":-0.05},{" a":-0.11},{" little":-0.62},{" girl":-0.4}],"text_offset":[0,6,10,12,19]},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}""")!),
                "v1/chat/completions" => (
                    JsonNode.Parse("""{"model":"demo","messages":[{"role":"system","content":"You tell short stories."},{"role":"user","content":"A story about a cat."}],"max_completion_tokens":32,"temperature":0.7,"seed":42}""")!,
                    JsonNode.Parse("""{"id":"chatcmpl-9a0b","object":"chat.completion","created":1735689600,"model":"demo","choices":[{"index":0,"message":{"role":"assistant","content":"Once upon a time, a cat named Tom found a ball."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":14,"total_tokens":38}}""")!),
                _ => null,
            };
            var doc = context.ApiDescription.ActionDescriptor.EndpointMetadata.OfType<GenerationDoc>().FirstOrDefault();
            if (doc is null) return;
            operation.RequestBody = new OpenApiRequestBody
            {
                Required = true,
                Content = new Dictionary<string, OpenApiMediaType>
                {
                    ["application/json"] = new() { Schema = Schema(doc.Request), Example = examples?.Request },
                },
            };
            operation.Responses ??= new OpenApiResponses();
            operation.Responses["200"] = new OpenApiResponse
            {
                Description = "The answer; with `stream: true` Server-Sent Events: `data: <chunk>` per token, `data: [DONE]` last.",
                Content = new Dictionary<string, OpenApiMediaType>
                {
                    ["application/json"] = new() { Schema = Schema(doc.Response), Example = examples?.Response },
                    ["text/event-stream"] = new() { Schema = Schema(doc.Chunk) },
                },
            };

            IOpenApiSchema Schema(Type type) => context.SchemaGenerator.GenerateSchema(type, context.SchemaRepository);
        }
    }
}
