using AdapterServe.Engine;
using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterServe.Server.Generation;

/// <summary>
/// More entries for <c>GET /v1/models</c> after the base model (the adapter registry registers one:
/// <c>services.AddSingleton&lt;IModelCardSource, …&gt;()</c>). Called per request; must be cheap and thread-safe.
/// </summary>
public interface IModelCardSource
{
    IEnumerable<ModelCard> ModelCards(ModelInfo baseModel);
}

/// <summary><c>GET /v1/models</c>: the base model first, then every <see cref="IModelCardSource"/>'s cards.</summary>
internal static class ModelEndpoints
{
    public const string Owner = "adapterserve";

    public static RouteGroupBuilder MapModels(this RouteGroupBuilder v1)
    {
        v1.MapGroup("/models").WithTags("Models").MapGet("", List)
            .WithName("ListModels")
            .WithSummary("List the models: the base model first, then its adapters")
            .ProducesOpenAIErrors(401, 503);
        return v1;
    }

    internal static Ok<ModelList> List(IGenerationEngine engine, IEnumerable<IModelCardSource> sources)
    {
        if (!engine.IsReady) throw ApiException.ModelLoading();
        var model = engine.Model;
        var cards = new List<ModelCard> { new(model.Id, "model", model.CreatedUnixSeconds, Owner, null, model.Id, model.ContextLength) };
        foreach (var source in sources) cards.AddRange(source.ModelCards(model));
        return TypedResults.Ok(new ModelList("list", cards));
    }
}
