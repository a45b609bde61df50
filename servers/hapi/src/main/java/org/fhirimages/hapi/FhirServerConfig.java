package org.fhirimages.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.IInterceptorService;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.binary.interceptor.BinaryStorageInterceptor;
import ca.uhn.fhir.jpa.binary.provider.BinaryAccessProvider;
import ca.uhn.fhir.jpa.binstore.DatabaseBinaryContentStorageSvcImpl;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.autoconfigure.orm.jpa.JpaProperties;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

import javax.sql.DataSource;

/** The beans HAPI's JPA configuration expects the application to define. */
@Configuration
public class FhirServerConfig {

	static final String IMPLEMENTATION_DESCRIPTION =
			"fhir-images HAPI FHIR JPA test server (label-only changes trigger subscriptions)";

	@Bean
	public JpaStorageSettings jpaStorageSettings() {
		JpaStorageSettings settings = new JpaStorageSettings();
		// Never answer a search from a cached result set: a search must see writes immediately.
		settings.setReuseCachedSearchResultsForMillis(null);
		// Externalized binary content is put back into reads up to 10 MB (HAPI's defaults, made
		// explicit to match the hapiproject/hapi image). Larger Binaries come back as JSON with an
		// externalized-binary-id extension even for Accept: image/*; read their bytes with
		// GET Binary/{id}/$binary-access-read?path=Binary instead.
		settings.setAllowAutoInflateBinaries(true);
		settings.setAutoInflateBinariesMaximumBytes(10L * 1024 * 1024);
		return settings;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings(); // partitioning off
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		SubscriptionSettings settings = new SubscriptionSettings();
		settings.addSupportedSubscriptionType(SubscriptionChannelType.RESTHOOK);
		// Queue Subscription create/update at once instead of on the next poll: quicker activation.
		settings.setSubscriptionChangeQueuedImmediately(true);
		// Tag/security-label-only changes ($meta-add, $meta-delete) notify subscribers too.
		settings.setTriggerSubscriptionsForNonVersioningChanges(true);
		return settings;
	}

	/** Required by the subscription delivery machinery; e-mail channels are not enabled. */
	@Bean
	public IEmailSender emailSender() {
		return details -> {};
	}

	/** Binary content (Binary.data, large attachments) stored in the database. */
	@Bean
	public DatabaseBinaryContentStorageSvcImpl binaryStorageSvc() {
		return new DatabaseBinaryContentStorageSvcImpl();
	}

	@Bean
	@Primary
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			JpaProperties jpaProperties,
			DataSource dataSource) {
		LocalContainerEntityManagerFactoryBean factory =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		factory.setPersistenceUnitName("HAPI_PU");
		factory.setDataSource(dataSource);
		// hibernate.* settings come from spring.jpa.properties.* in application.properties
		factory.setJpaPropertyMap(jpaProperties.getProperties());
		return factory;
	}

	@Bean
	@Primary
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	@Bean
	public RestfulServer restfulServer(
			FhirContext fhirContext,
			IFhirSystemDao<?, ?> systemDao,
			ResourceProviderFactory resourceProviders,
			IJpaSystemProvider systemProvider,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			BinaryAccessProvider binaryAccessProvider,
			BinaryStorageInterceptor<?> binaryStorageInterceptor,
			IInterceptorService jpaInterceptorService) {
		RestfulServer server = new RestfulServer(fhirContext);
		// CRUD, search, $meta/$meta-add/$meta-delete, $validate for every resource type.
		server.registerProviders(resourceProviders.createProviders());
		// System level: transaction/batch Bundles, history, $meta, ...
		server.registerProvider(systemProvider);
		// $binary-access-read / $binary-access-write
		server.registerProvider(binaryAccessProvider);
		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport);
		// Tests look for this to know that label-only changes trigger subscriptions here.
		capabilities.setImplementationDescription(IMPLEMENTATION_DESCRIPTION);
		server.setServerConformanceProvider(capabilities);
		server.setPagingProvider(pagingProvider);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);

		// Storage-level hook (not a REST interceptor): moves binary content into the binary
		// storage service on write and inflates it again on read.
		jpaInterceptorService.registerInterceptor(binaryStorageInterceptor);
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer restfulServer) {
		ServletRegistrationBean<RestfulServer> registration =
				new ServletRegistrationBean<>(restfulServer, "/fhir/*");
		registration.setName("fhir");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
