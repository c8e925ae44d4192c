package interop.dcp;

import org.eclipse.edc.policy.context.request.spi.RequestCatalogPolicyContext;
import org.eclipse.edc.policy.context.request.spi.RequestContractNegotiationPolicyContext;
import org.eclipse.edc.policy.context.request.spi.RequestPolicyContext;
import org.eclipse.edc.policy.context.request.spi.RequestTransferProcessPolicyContext;
import org.eclipse.edc.policy.engine.spi.PolicyEngine;
import org.eclipse.edc.runtime.metamodel.annotation.Extension;
import org.eclipse.edc.runtime.metamodel.annotation.Inject;
import org.eclipse.edc.spi.security.Vault;
import org.eclipse.edc.spi.system.ServiceExtension;
import org.eclipse.edc.spi.system.ServiceExtensionContext;

import java.util.Arrays;
import java.util.List;

/**
 * The two things an EDC 0.14.1 runtime in DCP mode needs and Maven Central does not ship:
 *
 * <ul>
 *   <li>default scopes: no scope extractor is registered by default, so a consumer's request
 *       carries no scope (and EDC's own IdentityAndTrustService then refuses to obtain a token)
 *       and a provider queries the holder's Credential Service with an empty scope list. Every
 *       DCP deployment of EDC adds such a rule (the Minimum Viable Dataspace does the same);
 *       here the scopes come from {@code interop.dcp.scopes} (comma-separated);</li>
 *   <li>the STS client secret: the remote STS client reads it from the vault, and the default
 *       vault is an empty in-memory one; {@code interop.vault.<alias>=<secret>} seeds it.</li>
 * </ul>
 */
@Extension(InteropDcpExtension.NAME)
public class InteropDcpExtension implements ServiceExtension {
    public static final String NAME = "interop: DCP default scopes and vault seed";

    @Inject
    private PolicyEngine policyEngine;

    @Inject
    private Vault vault;

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

    private <C extends RequestPolicyContext> void register(Class<C> type, List<String> scopes) {
        policyEngine.registerPreValidator(type, (policy, ctx) -> {
            scopes.forEach(ctx.requestScopeBuilder()::scope);
            return true;
        });
    }
}
