package interop.ih;

import org.eclipse.edc.identityhub.spi.authentication.ServicePrincipal;
import org.eclipse.edc.identityhub.spi.participantcontext.ParticipantContextService;
import org.eclipse.edc.identityhub.spi.participantcontext.model.KeyDescriptor;
import org.eclipse.edc.identityhub.spi.participantcontext.model.ParticipantManifest;
import org.eclipse.edc.runtime.metamodel.annotation.Extension;
import org.eclipse.edc.runtime.metamodel.annotation.Inject;
import org.eclipse.edc.spi.EdcException;
import org.eclipse.edc.spi.security.Vault;
import org.eclipse.edc.spi.system.ServiceExtension;
import org.eclipse.edc.spi.system.ServiceExtensionContext;

import java.util.List;
import java.util.Map;

/**
 * The first caller of IdentityHub's Identity API. Every participant context, the super-user's
 * included, is created through {@link ParticipantContextService}, and the Identity API only
 * answers a participant's API key: someone has to create the first one. IdentityHub 0.15.1 ships
 * no such seed (each deployment writes its own, as the Minimum Viable Dataspace does). On start
 * this one creates the participant context {@code super-user} with the {@code admin} role and
 * sets its API key to {@code interop.ih.superuser.key}; everything else (EDC's participant
 * context, its key, DID document and credentials) then goes through the Identity API.
 */
@Extension(SuperUserSeedExtension.NAME)
public class SuperUserSeedExtension implements ServiceExtension {
    public static final String NAME = "interop: IdentityHub super-user seed";
    private static final String SUPER_USER = "super-user";

    @Inject
    private ParticipantContextService participants;

    @Inject
    private Vault vault;

    private String apiKey;

    @Override
    public String name() {
        return NAME;
    }

    @Override
    public void initialize(ServiceExtensionContext context) {
        apiKey = context.getConfig().getString("interop.ih.superuser.key");
    }

    @Override
    public void start() {
        var manifest = ParticipantManifest.Builder.newInstance()
                .participantContextId(SUPER_USER)
                .did("did:web:" + SUPER_USER)
                .active(true)
                .roles(List.of(ServicePrincipal.ROLE_ADMIN))
                .key(KeyDescriptor.Builder.newInstance()
                        .keyId(SUPER_USER + "-key")
                        .privateKeyAlias(SUPER_USER + "-alias")
                        .keyGeneratorParams(Map.of("algorithm", "EC", "curve", "secp256r1"))
                        .build())
                .build();
        participants.createParticipantContext(manifest).orElseThrow(f -> new EdcException(f.getFailureDetail()));
        var alias = participants.getParticipantContext(SUPER_USER)
                .orElseThrow(f -> new EdcException(f.getFailureDetail())).getApiTokenAlias();
        vault.storeSecret(SUPER_USER, alias, apiKey);
    }
}
