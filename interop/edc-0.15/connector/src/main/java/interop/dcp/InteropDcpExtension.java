package interop.dcp;

import org.eclipse.edc.iam.decentralizedclaims.spi.SecureTokenService;
import org.eclipse.edc.iam.decentralizedclaims.sts.remote.RemoteSecureTokenService;
import org.eclipse.edc.iam.decentralizedclaims.sts.remote.StsRemoteClientConfiguration;
import org.eclipse.edc.iam.oauth2.spi.client.Oauth2Client;
import org.eclipse.edc.participantcontext.spi.config.ParticipantContextConfig;
import org.eclipse.edc.policy.context.request.spi.RequestCatalogPolicyContext;
import org.eclipse.edc.policy.context.request.spi.RequestContractNegotiationPolicyContext;
import org.eclipse.edc.policy.context.request.spi.RequestPolicyContext;
import org.eclipse.edc.policy.context.request.spi.RequestTransferProcessPolicyContext;
import org.eclipse.edc.policy.engine.spi.PolicyEngine;
import org.eclipse.edc.runtime.metamodel.annotation.Extension;
import org.eclipse.edc.runtime.metamodel.annotation.Inject;
import org.eclipse.edc.runtime.metamodel.annotation.Provider;
import org.eclipse.edc.spi.security.Vault;
import org.eclipse.edc.spi.system.ServiceExtension;
import org.eclipse.edc.spi.system.ServiceExtensionContext;

import java.util.Arrays;
import java.util.List;

/**
 * The three things an EDC 0.15.1 runtime in DCP mode needs and Maven Central does not ship:
 *
 * <ul>
 *   <li>default scopes: no scope extractor is registered by default, so a consumer's request
 *       carries no scope (and EDC's own IdentityAndTrustService then refuses to obtain a token)
 *       and a provider queries the holder's Credential Service with an empty scope list. Every
 *       DCP deployment of EDC adds such a rule (the Minimum Viable Dataspace does the same);
 *       here the scopes come from {@code interop.dcp.scopes} (comma-separated);</li>
 *   <li>the STS client secret: the remote STS client reads it from the vault, and the default
 *       vault is an empty in-memory one; {@code interop.vault.<alias>=<secret>} seeds it;</li>
 *   <li>the remote STS client: {@code decentralized-claims-controlplane-dcp-bom} 0.15.1 names
 *       {@code decentralized-claims-sts-remote-client} 0.15.1, which Maven Central does not serve
 *       (no 0.15.x at all). Its whole content is the provider below: a
 *       {@link RemoteSecureTokenService} (from {@code decentralized-claims-sts-remote-lib}, which is
 *       served) configured by {@code edc.iam.sts.oauth.token.url}, {@code .client.id} and
 *       {@code .client.secret.alias}, here pointed at IdentityHub's STS.</li>
 * </ul>
 */
@Extension(InteropDcpExtension.NAME)
public class InteropDcpExtension implements ServiceExtension {
    public static final String NAME = "interop: DCP default scopes, vault seed, remote STS client";

    @Inject
    private PolicyEngine policyEngine;

    @Inject
    private Vault vault;

    @Inject
    private Oauth2Client oauth2Client;

    @Inject
    private ParticipantContextConfig participantContextConfig;

    @Override
    public String name() {
        return NAME;
    }

    @Override
    public void initialize(ServiceExtensionContext context) {
        List<String> scopes = Arrays.stream(context.getConfig().getString("interop.dcp.scopes", "").split(","))
                .map(String::trim).filter(s -> !s.isEmpty()).toList();
        register(RequestCatalogPolicyContext.class, scopes);
        register(RequestContractNegotiationPolicyContext.class, scopes);
        register(RequestTransferProcessPolicyContext.class, scopes);
        context.getConfig("interop.vault").getRelativeEntries()
                .forEach((alias, secret) -> vault.storeSecret(alias, secret));
        context.getMonitor().info("interop DCP: default scopes " + scopes);
    }

    @Provider
    public SecureTokenService secureTokenService() {
        return new RemoteSecureTokenService(oauth2Client, this::stsClient, vault);
    }

    private StsRemoteClientConfiguration stsClient(String participantContextId) {
        return new StsRemoteClientConfiguration(
                participantContextConfig.getString(participantContextId, "edc.iam.sts.oauth.token.url"),
                participantContextConfig.getString(participantContextId, "edc.iam.sts.oauth.client.id"),
                participantContextConfig.getString(participantContextId, "edc.iam.sts.oauth.client.secret.alias"));
    }

    private <C extends RequestPolicyContext> void register(Class<C> type, List<String> scopes) {
        policyEngine.registerPreValidator(type, (policy, ctx) -> {
            scopes.forEach(ctx.requestScopeBuilder()::scope);
            return true;
        });
    }
}
